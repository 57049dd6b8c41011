"""Tracing costs nothing without an exporter: `setup_tracing` then installs
no SDK tracer provider and instruments nothing, and no trace context is written into or read
from messages. With an exporter it installs both. Each case runs in a fresh interpreter: the
tracer provider and aiohttp's instrumentation are process-wide and set once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from corral_common import telemetry

PROBE = """
import aiohttp.web
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
from corral_common.telemetry import setup_tracing
setup_tracing("probe", http_server=True, http_client=True)
print(type(trace.get_tracer_provider()).__name__)
print(AioHttpServerInstrumentor().is_instrumented_by_opentelemetry)
print(AioHttpClientInstrumentor().is_instrumented_by_opentelemetry)
"""

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED")


def run_probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in OTEL_VARS}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    ],
)
def test_without_an_exporter_nothing_is_installed(env: dict[str, str]) -> None:
    assert run_probe(**env) == ["ProxyTracerProvider", "False", "False"]


def test_with_an_exporter_the_provider_and_instrumentation_are_installed() -> None:
    assert run_probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9") == [
        "TracerProvider",
        "True",
        "True",
    ]


@pytest.mark.parametrize(
    ("env", "configured"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_what_counts_as_configured(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], configured: bool
) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert telemetry.tracing_configured() is configured


def test_no_span_no_context_written_and_none_read() -> None:
    headers: dict[str, object] = {"x-corral": "1"}
    telemetry.inject_context(headers)
    assert headers == {"x-corral": "1"}
    assert telemetry.extract_context(headers) is telemetry.EMPTY_CONTEXT
    assert telemetry.extract_context(None) is telemetry.EMPTY_CONTEXT
