"""The request timeline: when each generation request's handler started and when its response
ended, on the monotonic and the wall clock, so a benchmark can see how long the backend sat
idle between one response and the next request (`/_emulator/timeline`)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_emulator.activity import ChangeNotifier, Outcome

ARRIVED_KEY = web.RequestKey("corral_emulator.arrived", tuple[int, int])
"""The request's `(time.monotonic_ns(), time.time_ns())` when its handling began (app.py)."""

TIMELINE_LIMIT = 100_000
"""Generation requests kept (oldest dropped first): a long benchmark's worth."""


@dataclass(slots=True)
class TimelineEntry:
    endpoint: str
    """`chat`, `generate`, `openai_chat` or `openai_completions`."""
    model: str
    start_ns: int
    """`time.monotonic_ns()` when the request's handler started (headers read, body not yet)."""
    start_wall_ns: int
    """`time.time_ns()` at the same moment."""
    end_ns: int | None = None
    """`time.monotonic_ns()` once the response's last byte was handed to the transport (the
    end of the body written), or once the request was cancelled; None while it runs."""
    end_wall_ns: int | None = None
    outcome: Outcome | None = None
    tokens: int = 0
    """Tokens generated (sent, when streamed)."""
    epoch: int = 0
    """The timeline's epoch when it started (a clear bumps it; see `Timeline.open`)."""

    def to_mapping(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "model": self.model,
            "start_ns": self.start_ns,
            "start_wall_ns": self.start_wall_ns,
            "end_ns": self.end_ns,
            "end_wall_ns": self.end_wall_ns,
            "outcome": None if self.outcome is None else self.outcome.value,
            "tokens": self.tokens,
        }


class Timeline:
    """Generation requests in the order their handlers started."""

    def __init__(self, changes: ChangeNotifier, limit: int = TIMELINE_LIMIT) -> None:
        self._entries: deque[TimelineEntry] = deque(maxlen=limit)
        self._changes = changes
        self._epoch = 0
        self.open = 0
        """Requests started and not yet ended (the `timeline_open` stat), so a reader can wait
        for the last end to be stamped: it comes a moment after the client has the answer."""

    def start(self, endpoint: str, model: str, start_ns: int, start_wall_ns: int) -> TimelineEntry:
        entry = TimelineEntry(endpoint, model, start_ns, start_wall_ns, epoch=self._epoch)
        self._entries.append(entry)
        self.open += 1
        return entry

    def end(self, entry: TimelineEntry, outcome: Outcome, tokens: int) -> None:
        """Stamp the end once; later calls (a `finally` after an earlier end) keep it."""
        if entry.end_ns is None:
            entry.end_ns = time.monotonic_ns()
            entry.end_wall_ns = time.time_ns()
            entry.outcome = outcome
            entry.tokens = tokens
            if entry.epoch == self._epoch:
                self.open -= 1
            self._changes.notify()

    def entries(self) -> list[TimelineEntry]:
        return list(self._entries)

    def clear(self) -> None:
        """Forget every request; ones still running are no longer counted open (their end
        stamps land on entries no longer listed)."""
        self._entries.clear()
        self._epoch += 1
        self.open = 0


def idle_gaps_ns(entries: Iterable[Mapping[str, Any]]) -> list[int]:
    """From `/_emulator/timeline`'s requests: for each request started after every earlier one
    had ended, the time from the last of those ends to this start (the backend idle in
    between); a request that overlaps an earlier one, or follows one that never ended, adds no
    gap. Monotonic clock, nanoseconds, in start order."""
    gaps: list[int] = []
    busy_until: int | None = None
    running = False
    for entry in sorted(entries, key=lambda e: int(e["start_ns"])):
        start = int(entry["start_ns"])
        if busy_until is not None and not running and start >= busy_until:
            gaps.append(start - busy_until)
        end = entry["end_ns"]
        if end is None:
            running = True
            continue
        busy_until = int(end) if busy_until is None else max(busy_until, int(end))
    return gaps
