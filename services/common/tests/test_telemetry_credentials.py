"""Credential headers are on OpenTelemetry's sanitize list whatever the operator configured, so
turning on header capture can never put an API key in a trace."""

from __future__ import annotations

import os

import pytest

from corral_common import telemetry


def test_credentials_join_the_operators_sanitize_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(telemetry.SANITIZE_ENV, "X-Secret, Authorization")
    telemetry._never_capture_credentials()
    fields = os.environ[telemetry.SANITIZE_ENV].split(",")
    assert fields[:2] == ["X-Secret", "Authorization"]
    assert {"x-api-key", "cookie"} <= set(fields)
    assert "authorization" not in fields  # already there, in the operator's spelling


def test_credentials_are_sanitized_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(telemetry.SANITIZE_ENV, raising=False)
    telemetry._never_capture_credentials()
    assert set(os.environ[telemetry.SANITIZE_ENV].split(",")) == set(telemetry.CREDENTIAL_HEADERS)
