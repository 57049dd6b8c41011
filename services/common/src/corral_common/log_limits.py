"""Bounded logs: repeats of one event are let through a few at a time, then summarised.

Under a flood of bad requests the gateway wrote 134 MB of log in a minute, one line per
request, filling disks and drowning what mattered. Lines are grouped by event name, level and
whether they carry a traceback; in each interval the first `burst` of a group go out, the rest
are counted, and the group's next line after the interval is preceded by one summary line:
`suppressed K similar` (with `similar_to`, `suppressed` and `interval_s`). A traceback forms a
group of its own, so errors with tracebacks still go out at least once per interval however many
plain lines share their name.

Like rsyslog's "message repeated N times", a summary is written when its group logs again: a
flood that stops dead leaves its last count unreported, which costs nothing when the
flood's first lines already said what happened.

Both paths are limited with one `RepeatLimiter`: structlog events (`RateLimitProcessor`, before
tracebacks are formatted and lines rendered, so a dropped line costs little) and standard-library
records from aiohttp and aio-pika (`RateLimitFilter` on the handler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

# A summary line carries this key so it is never limited itself (and it is removed before
# rendering).
_SUMMARY = "_log_limits_summary"
# An event logged with `**UNLIMITED` is never limited either: the gateway's access log, whose
# point is one line per request (it has a switch of its own, CORRAL_ACCESS_LOG).
UNLIMITED: dict[str, bool] = {_SUMMARY: True}
# Groups are event names, a small fixed set in practice; this bounds the table if some caller
# puts variable text in the event name.
MAX_GROUPS = 4096

Key = tuple[str, str, bool]
# Looked up when a limiter is made, so tests can give configure_logging's limiter a clock.
_monotonic = time.monotonic


@dataclass
class _Window:
    started: float
    seen: int = 1
    suppressed: int = 0


class RepeatLimiter:
    """Per group, lets `burst` lines through per `interval_s`; counts the rest."""

    def __init__(
        self, burst: int = 50, interval_s: float = 10.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock or _monotonic
        self._windows: dict[Key, _Window] = {}

    def admit(self, key: Key) -> tuple[bool, int]:
        """(whether this line goes out, how many were suppressed in the group's last window
        and must be reported now)."""
        if self.burst <= 0:
            return True, 0
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval_s:
            report = window.suppressed if window is not None else 0
            if window is None and len(self._windows) >= MAX_GROUPS:
                self._forget_expired(now)
            self._windows[key] = _Window(now)
            return True, report
        window.seen += 1
        if window.seen <= self.burst:
            return True, 0
        window.suppressed += 1
        return False, 0

    def _forget_expired(self, now: float) -> None:
        expired = [k for k, w in self._windows.items() if now - w.started >= self.interval_s]
        for key in expired:
            del self._windows[key]
        if len(self._windows) >= MAX_GROUPS:
            # Still full of live groups: start over rather than grow without bound.
            self._windows.clear()


class RateLimitProcessor:
    """A structlog processor (after `add_log_level`, before `format_exc_info`)."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        self.limiter = limiter

    def __call__(
        self, logger: Any, method_name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event.pop(_SUMMARY, False):
            return event
        name = str(event.get("event", ""))
        level = str(event.get("level", method_name))
        traceback = bool(event.get("exc_info")) or "exception" in event
        admitted, suppressed = self.limiter.admit((name, level, traceback))
        if suppressed:
            summary = {
                "similar_to": name,
                "suppressed": suppressed,
                "interval_s": self.limiter.interval_s,
                _SUMMARY: True,
            }
            emit = getattr(structlog.get_logger(__name__), level, None)
            if callable(emit):
                emit(f"suppressed {suppressed} similar", **summary)
        if not admitted:
            raise structlog.DropEvent
        return event


class RateLimitFilter(logging.Filter):
    """The same limit for standard-library records (grouped by their message template)."""

    def __init__(self, limiter: RepeatLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY, False):
            return True
        key = (str(record.msg), record.levelname.lower(), record.exc_info is not None)
        admitted, suppressed = self.limiter.admit(key)
        if suppressed:
            # Through the same logger and handlers (re-entrant: handlers hold an RLock).
            logging.getLogger(record.name).log(
                record.levelno,
                "suppressed %d similar: %s",
                suppressed,
                str(record.msg),
                extra={
                    _SUMMARY: True,
                    "similar_to": str(record.msg),
                    "suppressed": suppressed,
                    "interval_s": self.limiter.interval_s,
                },
            )
        return admitted
