"""The latest status each scheduler broadcast (`status.scheduler` on `corral.events`), and
each session store (`status.session-store`, `StoreBoard` below).

Gateways answer /health, queue views and Retry-After from it; the model manager reads each
model's queued and running work from it before unloading anything. Only fresh statuses count:
an old one describes a lane that has moved on, or a scheduler that died.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import structlog
from pydantic import ValidationError

from corral_common.messages import SchedulerStatus, SessionCounts, StoreStatus
from corral_common.timeouts import within

log = structlog.get_logger(__name__)


S = TypeVar("S", SchedulerStatus, StoreStatus)


class Board(Generic[S]):
    """The latest status per sender, newest by `sent_at`; only fresh ones count."""

    status_type: type[S]
    what = "status"

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self._latest: dict[str, S] = {}
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._updated = asyncio.Event()

    @staticmethod
    def sender(status: S) -> str:
        raise NotImplementedError

    def update(self, status: S) -> None:
        known = self._latest.get(self.sender(status))
        if known is None or status.sent_at >= known.sent_at:
            self._latest[self.sender(status)] = status
        self._updated.set()
        self._updated = asyncio.Event()

    def take(self, body: bytes) -> None:
        """Update from a broadcast's body; an unreadable one is dropped."""
        try:
            self.update(self.status_type.model_validate_json(body))
        except ValidationError:
            log.warning(f"unreadable {self.what} dropped")

    def fresh(self) -> list[S]:
        cutoff = self._clock() - self._stale_after_s
        return [s for s in self._latest.values() if s.sent_at >= cutoff]


class StatusBoard(Board[SchedulerStatus]):
    status_type = SchedulerStatus
    what = "scheduler status"

    @staticmethod
    def sender(status: SchedulerStatus) -> str:
        return status.scheduler_id

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


StoreState = Literal["up", "down", "unknown"]


class StoreBoard(Board[StoreStatus]):
    """The latest status each session store broadcast (`status.session-store`).

    `state()` is "up" while a fresh status says the store's last health write succeeded;
    "down" when the fresh ones say it failed, or every status heard has gone stale (a store
    that stopped talking); "unknown" while none was ever heard (a gateway just started, or a
    cluster run without a session store), which the gateway's /health does not hold against
    the cluster, since it cannot tell "not deployed" from "not reported yet"."""

    status_type = StoreStatus
    what = "store status"

    @staticmethod
    def sender(status: StoreStatus) -> str:
        return status.instance_id

    def state(self) -> StoreState:
        if not self._latest:
            return "unknown"
        return "up" if any(s.database.up for s in self.fresh()) else "down"

    def last_write_at(self) -> float | None:
        writes = [s.database.last_write_at for s in self._latest.values()]
        return max((w for w in writes if w is not None), default=None)

    def sessions(self) -> SessionCounts | None:
        """The newest count of the sessions any store has reported (every replica counts the
        same database), stale or not: its `counted_at` says how old it is."""
        counts = [s.sessions for s in self._latest.values() if s.sessions is not None]
        return max(counts, key=lambda c: c.counted_at, default=None)

    def error(self) -> str | None:
        fresh = self.fresh()
        if not fresh and self._latest:
            return "no status from any session store for a while"
        errors = [s.database.error for s in fresh if not s.database.up and s.database.error]
        return errors[0] if errors else None
