"""Bounded logs: repeats pass a few per interval, then one summary line; tracebacks still pass."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import structlog

from corral_common import log_limits
from corral_common.log_limits import RepeatLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_repeats_are_counted_and_reported_once() -> None:
    clock = Clock()
    limiter = RepeatLimiter(burst=3, interval_s=10, clock=clock)
    key = ("bad request", "warning", False)
    assert [limiter.admit(key) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    clock.now += 10
    # The next window's first line goes out, and reports the last window's count once.
    assert limiter.admit(key) == (True, 2)
    assert limiter.admit(key) == (True, 0)


def test_groups_are_by_event_level_and_traceback() -> None:
    limiter = RepeatLimiter(burst=1, interval_s=10, clock=Clock())
    assert limiter.admit(("a", "warning", False)) == (True, 0)
    assert limiter.admit(("a", "warning", False)) == (False, 0)
    assert limiter.admit(("a", "error", False)) == (True, 0)
    assert limiter.admit(("b", "warning", False)) == (True, 0)
    # An error with a traceback is its own group: it gets through however many plain lines
    # of that name were suppressed.
    assert limiter.admit(("a", "warning", True)) == (True, 0)


def test_zero_burst_is_no_limit() -> None:
    limiter = RepeatLimiter(burst=0, interval_s=10, clock=Clock())
    assert all(limiter.admit(("a", "info", False))[0] for _ in range(1000))


def test_the_group_table_is_bounded() -> None:
    clock = Clock()
    limiter = RepeatLimiter(burst=1, interval_s=10, clock=clock)
    for i in range(log_limits.MAX_GROUPS * 2):
        limiter.admit((f"event {i}", "info", False))
    assert len(limiter._windows) <= log_limits.MAX_GROUPS


@pytest.fixture
def log_lines(
    logs_to_buffer: Callable[..., io.BytesIO], monkeypatch: pytest.MonkeyPatch
) -> tuple[io.BytesIO, Clock]:
    clock = Clock()
    monkeypatch.setattr(log_limits, "_monotonic", clock)
    return logs_to_buffer("info", burst=2, burst_interval_s=10), clock


def lines(out: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_structlog_events_are_limited_and_summarised(
    log_lines: tuple[io.BytesIO, Clock],
) -> None:
    out, clock = log_lines
    log = structlog.get_logger("t")
    for i in range(100):
        log.warning("invalid request", attempt=i)
    for _ in range(5):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("invalid request")
    log.info("something else")
    clock.now += 10
    log.warning("invalid request", attempt=100)
    written = lines(out)
    plain = [line for line in written if line["event"] == "invalid request"]
    assert [line.get("attempt") for line in plain if "exception" not in line] == [0, 1, 100]
    # Tracebacks: their own group, the first two of the interval go out in full.
    assert sum("ValueError: boom" in line.get("exception", "") for line in plain) == 2
    summaries = [line for line in written if line["event"].startswith("suppressed")]
    assert summaries == [
        {
            **summaries[0],
            "event": "suppressed 98 similar",
            "similar_to": "invalid request",
            "suppressed": 98,
            "level": "warning",
        }
    ]
    assert written.index(summaries[0]) == written.index(plain[-1]) - 1
    assert any(line["event"] == "something else" for line in written)


def test_library_records_are_limited_too(log_lines: tuple[io.BytesIO, Clock]) -> None:
    out, clock = log_lines
    library = logging.getLogger("aiohttp.server")
    for _ in range(50):
        library.warning("Error handling request from %s", "127.0.0.1")
    clock.now += 10
    library.warning("Error handling request from %s", "127.0.0.1")
    written = lines(out)
    assert [line["event"] for line in written] == [
        "Error handling request from 127.0.0.1",
        "Error handling request from 127.0.0.1",
        "suppressed 48 similar: Error handling request from %s",
        "Error handling request from 127.0.0.1",
    ]
