"""URL credentials masked for display, in any text, and in every log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

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
