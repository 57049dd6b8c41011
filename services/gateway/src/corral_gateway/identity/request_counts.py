"""Request counts kept by each gateway and shared through the store off the request's path.

Counting every request in the store put a broker round trip and a database update (an RPC to
the session store, `IDENTITY.count`) in front of every answer, rate limits being on by default.
Instead each gateway counts its callers' requests itself and sends what it counted to the store
at most every `CORRAL_RATE_LIMIT_SYNC_MS`, in one `count` call per caller (`add=n`), learning
from the reply the total every replica has sent. Kong's rate limiting does the same with its
`sync_rate`.

- A caller's first request in a window is counted in the store before it is answered, so a
  gateway starts from the cluster's total (a restarted gateway hands out no fresh minute).
- Later requests are decided on that total plus what this gateway counted since: with one
  gateway the decision is exact. With several, a caller can go over its limit by what it was
  admitted on the other replicas since their last sync (at most one sync interval's worth).
- A refusal is never wrong: the local figure can only trail the real total (counts only grow
  within a window), so a caller refused here is over its limit everywhere.
- The store away: the request goes on unchecked (fail open, as before); counts sent in a call
  that failed stay counted here and are not sent again (the store may have applied them).

With `CORRAL_RATE_LIMIT_SYNC_MS=0` every request is counted in the store before its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral_common.contracts.identity import CounterSpec, CounterValue
from corral_gateway.identity.limits import REQUESTS_COUNTER, WINDOW_S

# Callers remembered at most; past it, the ones whose window is over go first.
CALLERS_REMEMBERED = 100_000
# Store calls a flush keeps in flight (many callers, one sync interval).
SENDS_AT_ONCE = 64

Count = Callable[[str, CounterSpec, float], Awaitable[CounterValue | None]]
"""Add to one of a subject's counters in the store at a moment (epoch seconds); the total after,
or None when the store cannot be reached."""


@dataclass
class _Window:
    reset_at: float
    total: int
    """The cluster's total as the store last reported it, plus what was sent since."""
    unsent: int = 0
    last_at: float = 0.0
    """When the newest unsent request was counted (its window is the one it is sent into)."""

    def value(self) -> CounterValue:
        return CounterValue(
            name=REQUESTS_COUNTER, count=self.total + self.unsent, reset_at=self.reset_at
        )


class SharedCounts:
    def __init__(self, count: Count, wall: Callable[[], float]) -> None:
        self._count = count
        self._wall = wall
        self._windows: dict[str, _Window] = {}

    async def add(self, subject: str) -> CounterValue | None:
        """Count one request of `subject`: its window's total after it, or None when the store
        could not be asked (the request goes on unchecked)."""
        now = self._wall()
        window = self._windows.get(subject)
        if window is not None and now < window.reset_at:
            window.unsent += 1
            window.last_at = now
            return window.value()
        counted = await self._count(subject, _request(1), now)
        if counted is None:
            return None
        window = self._windows.get(subject)
        if window is not None and window.reset_at == counted.reset_at:
            # Another request of the caller learned the window's total meanwhile.
            window.total = max(window.total, counted.count)
            return window.value()
        if window is not None and window.unsent:
            # The old window's requests still go out, into that window.
            await self._send(subject, window)
        self._remember(subject, _Window(reset_at=counted.reset_at, total=counted.count))
        return counted

    async def flush(self) -> None:
        """Send every caller's unsent counts; forget callers whose window is over."""
        now = self._wall()
        due = [(subject, w) for subject, w in self._windows.items() if w.unsent]
        for start in range(0, len(due), SENDS_AT_ONCE):
            await asyncio.gather(*(self._send(s, w) for s, w in due[start : start + SENDS_AT_ONCE]))
        for subject, window in list(self._windows.items()):
            if window.reset_at <= now and not window.unsent:
                del self._windows[subject]

    async def _send(self, subject: str, window: _Window) -> None:
        sent, window.unsent = window.unsent, 0
        window.total += sent
        counted = await self._count(subject, _request(sent), window.last_at)
        if counted is not None and counted.reset_at == window.reset_at:
            window.total = max(window.total, counted.count)

    def _remember(self, subject: str, window: _Window) -> None:
        self._windows.pop(subject, None)
        self._windows[subject] = window
        if len(self._windows) <= CALLERS_REMEMBERED:
            return
        now = self._wall()
        for old, kept in list(self._windows.items()):
            if kept.reset_at <= now and not kept.unsent:
                del self._windows[old]
        while len(self._windows) > CALLERS_REMEMBERED:
            # Dropping a caller loses at most its unsent counts: the fail-open direction.
            del self._windows[next(iter(self._windows))]


def _request(add: int) -> CounterSpec:
    return CounterSpec(name=REQUESTS_COUNTER, window_s=WINDOW_S, add=add)
