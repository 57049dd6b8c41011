"""The latest status each scheduler broadcast (`status.scheduler` on `corral.events`).

Gateways answer /health, queue views and Retry-After from it; the model manager reads each
model's queued and running work from it before unloading anything. Only fresh statuses count:
an old one describes a lane that has moved on, or a scheduler that died.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from pydantic import ValidationError

from corral_common.messages import SchedulerStatus
from corral_common.timeouts import within

log = structlog.get_logger(__name__)


class StatusBoard:
    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self._latest: dict[str, SchedulerStatus] = {}
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._updated = asyncio.Event()

    def update(self, status: SchedulerStatus) -> None:
        known = self._latest.get(status.scheduler_id)
        if known is None or status.sent_at >= known.sent_at:
            self._latest[status.scheduler_id] = status
        self._updated.set()
        self._updated = asyncio.Event()

    def take(self, body: bytes) -> None:
        """Update from a broadcast's body; an unreadable one is dropped."""
        try:
            self.update(SchedulerStatus.model_validate_json(body))
        except ValidationError:
            log.warning("unreadable scheduler status dropped")

    def fresh(self) -> list[SchedulerStatus]:
        cutoff = self._clock() - self._stale_after_s
        return [s for s in self._latest.values() if s.sent_at >= cutoff]

    async def newer_than(self, moment: float, within_s: float) -> list[SchedulerStatus]:
        """Fresh statuses, after waiting (bounded) for one sent after `moment`."""
        deadline = time.monotonic() + within_s
        while not any(s.sent_at >= moment for s in self._latest.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await within(self._updated.wait(), remaining)
            except TimeoutError:
                break
        return self.fresh()
