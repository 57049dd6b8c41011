"""What a client sent is clipped in log lines: a 10 MB model name never reaches the log whole."""

from __future__ import annotations

from corral_common.clip import CLIP_CHARS
from corral_common.logging import FIELD_CHARS, clip_event


def test_client_fields_are_clipped_like_error_texts() -> None:
    event = clip_event(None, "info", {"event": "job submitted", "model": "m" * 10_000_000})
    assert event["model"].startswith("m" * CLIP_CHARS)
    assert len(event["model"]) < CLIP_CHARS + 32
    assert "(+9999936 chars)" in event["model"]


def test_other_strings_are_capped_and_tracebacks_left_whole() -> None:
    traceback = "Traceback (most recent call last):\n" + "  frame\n" * 1000
    event = clip_event(
        None,
        "error",
        {"event": "x", "error": "e" * 100_000, "exception": traceback, "count": 3},
    )
    assert len(event["error"]) < FIELD_CHARS + 32
    assert event["exception"] == traceback
    assert event["count"] == 3


def test_short_values_are_untouched() -> None:
    event = {"event": "job submitted", "model": "llama3.2:latest", "request_id": "r1"}
    assert clip_event(None, "info", dict(event)) == event
