"""Tokens per second through this gateway, for the operator's page: each running request's rate
and a per-second series of all tokens generated (the page's sparkline).

Fed from the token events of this gateway's requests (`lane_feed.LaneFeed`), counted in chunks:
one chunk is one token for Ollama's and the emulator's streams. Pure bookkeeping with an
injected clock; nothing here waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Seconds of history in the series (the sparkline's width).
SERIES_S = 60
# Requests followed at once; more running here would be a leak (a final event never came).
RUNNING_KEPT = 1000


@dataclass
class Generation:
    """One running request's tokens so far."""

    tokens: int = 0
    first_at: float | None = None
    """When its first tokens came."""
    first_batch: int = 0
    last_at: float | None = None

    def rate(self) -> float | None:
        """Tokens per second since its first tokens; None until a second batch came."""
        if self.first_at is None or self.last_at is None or self.last_at <= self.first_at:
            return None
        return (self.tokens - self.first_batch) / (self.last_at - self.first_at)


class Throughput:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._running: dict[str, Generation] = {}
        # Tokens by whole second (epoch), the last SERIES_S seconds.
        self._seconds: dict[int, int] = {}

    def tokens(self, request_id: str, count: int) -> None:
        now = self._clock()
        generation = self._running.get(request_id)
        if generation is None:
            if len(self._running) >= RUNNING_KEPT:
                self._running.pop(next(iter(self._running)))
            generation = self._running[request_id] = Generation()
        if generation.first_at is None:
            generation.first_at = now
            generation.first_batch = count
        generation.tokens += count
        generation.last_at = now
        second = int(now)
        self._seconds[second] = self._seconds.get(second, 0) + count
        for old in [s for s in self._seconds if s <= second - SERIES_S]:
            del self._seconds[old]

    def running(self, request_id: str) -> Generation | None:
        return self._running.get(request_id)

    def finish(self, request_id: str) -> Generation | None:
        return self._running.pop(request_id, None)

    def series(self) -> list[int]:
        """Tokens in each of the last SERIES_S whole seconds, oldest first (the second now
        under way is not over, so not shown)."""
        now = int(self._clock())
        return [self._seconds.get(second, 0) for second in range(now - SERIES_S, now)]
