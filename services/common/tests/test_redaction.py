"""URL credentials masked for display, in any text, and in every log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pytest
import structlog

from corral_common.ollama import unreachable
from corral_common.redaction import redact_secrets, redact_url


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("http://admin:pw@127.0.0.1:11434") == "http://admin:***@127.0.0.1:11434"
    assert redact_url("amqp://guest:guest@h:5672/vhost") == "amqp://guest:***@h:5672/vhost"
    assert redact_url("mongodb://u:p%40ss@h:27017/?authSource=admin") == (
        "mongodb://u:***@h:27017/?authSource=admin"
    )
    assert redact_url("http://127.0.0.1:11434") == "http://127.0.0.1:11434"
    assert redact_url("amqp://h/") == "amqp://h/"


def test_redact_secrets_masks_every_url_in_a_text() -> None:
    text = (
        "Cannot reach http://admin:pw@10.0.0.1:11434/api/chat, "
        "nor 'amqp://guest:s3cr3t@broker:5672/' or mongodb://token@db/x; mail me@example.com"
    )
    masked = redact_secrets(text)
    assert "pw" not in masked.split("admin:")[1][:4]
    assert "s3cr3t" not in masked
    assert "token" not in masked
    assert "http://admin:***@10.0.0.1:11434/api/chat" in masked
    assert "amqp://guest:***@broker:5672/" in masked
    assert "me@example.com" in masked  # not a URL's credentials
    assert redact_secrets("no urls here") == "no urls here"


def test_a_backend_error_never_carries_the_password() -> None:
    error = unreachable("http://admin:pw@127.0.0.1:1", ConnectionError("http://admin:pw@x down"))
    shown = f"{error.message} {error.details}"
    assert ":pw@" not in shown
    assert "admin:***@127.0.0.1:1" in error.message


def test_log_lines_are_masked_whatever_logged_them(
    logs_to_buffer: Callable[..., io.BytesIO],
) -> None:
    out = logs_to_buffer("debug")
    structlog.get_logger("t").warning(
        "connecting", url="http://admin:pw@h:1", nested={"urls": ["amqp://g:pw@b/"]}
    )
    try:
        raise ValueError("failed on mongodb://root:pw@db:27017")
    except ValueError:
        structlog.get_logger("t").exception("boom")
        logging.getLogger("lib").exception("library says http://admin:pw@h:2")
    written = out.getvalue().decode()
    assert written.count("***@") >= 5, written
    assert ":pw@" not in written


KEY = "crl_AbCd1234" + "x" * 32 + "Zz9Yy8"  # the format's length; the checksum does not matter


def test_corral_keys_keep_only_their_display_prefix() -> None:
    masked = redact_secrets(f"resolved {KEY} for 10.0.0.1; and again: '{KEY}'")
    assert KEY not in masked
    assert masked == "resolved crl_AbCd1234*** for 10.0.0.1; and again: 'crl_AbCd1234***'"
    # What clipping left of a key is masked too; a display prefix alone is no secret.
    assert redact_secrets(KEY[:20] + "…") == "crl_AbCd1234***…"
    assert redact_secrets("prefix crl_AbCd1234 shown") == "prefix crl_AbCd1234 shown"
    assert redact_secrets(redact_secrets(KEY)) == "crl_AbCd1234***"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer ***"),
        ("authorization: bearer operator-key-of-any-shape", "authorization: bearer ***"),
        (
            "{'Authorization': 'Bearer s3cr3t', 'Accept': '*/*'}",
            "{'Authorization': 'Bearer ***', 'Accept': '*/*'}",
        ),
        ("X-API-Key: s3cr3t", "X-API-Key: ***"),
        ('{"x-api-key": "s3cr3t"}', '{"x-api-key": "***"}'),
        ("Bearer ***", "Bearer ***"),
    ],
)
def test_bearer_tokens_and_api_key_headers_are_masked(text: str, masked: str) -> None:
    assert redact_secrets(text) == masked


def test_no_key_reaches_a_log_line(logs_to_buffer: Callable[..., io.BytesIO]) -> None:
    out = logs_to_buffer("debug")
    structlog.get_logger("t").info("request", headers={"Authorization": f"Bearer {KEY}"})
    structlog.get_logger("t").warning("lookup failed", key=KEY, keys=[KEY])
    logging.getLogger("aiohttp.server").error("bad header X-API-Key: %s", "operator-secret")
    try:
        raise RuntimeError(f"refused {KEY}")
    except RuntimeError:
        structlog.get_logger("t").exception("boom")
    written = out.getvalue().decode()
    assert KEY not in written and "operator-secret" not in written
    assert "Bearer crl_" not in written
    assert written.count("crl_AbCd1234***") >= 3, written
