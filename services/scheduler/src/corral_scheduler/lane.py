"""The ordered structure of admitted jobs waiting for the backend.

Pure bookkeeping, no I/O: the admission callback pushes, the executor pops from the head, a
cancel removes. Position = jobs ahead: the running one (if any) plus those earlier in the lane.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral_common.messages import Job, Priority
from corral_scheduler.ordering import ANONYMOUS, Ordering, OrderingPolicy


@dataclass(eq=False)
class Entry:
    job: Job
    # The AMQP delivery to ack once the job's final event is out; opaque here.
    delivery: Any
    # Which broker connection the delivery belongs to: after a reconnect the broker redelivers,
    # and entries from the old connection must not run.
    generation: int
    admitted_at: float
    # Admission order (see ordering.Waiting.arrival).
    arrival: int = 0
    estimate_ms: int = 0
    last_sent: tuple[int, int] | None = field(default=None)
    last_sent_at: float = 0.0
    # The first wait estimate the client was given, and when, to measure its error.
    first_estimate: tuple[float, int] | None = None
    # Times a job for the loaded model was run before this one (ordering's grouping bound).
    overtaken: int = 0

    @property
    def request_id(self) -> str:
        return self.job.request_id

    def told(self, position: int, wait_ms: int, now: float) -> None:
        """Record a position update sent to the client."""
        self.last_sent = (position, wait_ms)
        self.last_sent_at = now
        if self.first_estimate is None:
            self.first_estimate = (now, wait_ms)

    @property
    def key(self) -> str:
        return self.job.client_key or ANONYMOUS

    @property
    def priority(self) -> Priority:
        return self.job.priority

    @property
    def model(self) -> str:
        return self.job.model


class Lane:
    def __init__(self, ordering: Ordering | None = None) -> None:
        self._waiting: OrderedDict[str, Entry] = OrderedDict()
        # Set while there is something to run and the lane is not paused.
        self._runnable = asyncio.Event()
        self.paused = False
        # Draining: the jobs held run to the end, new ones are refused.
        self.draining = False
        self.ordering = ordering or Ordering(OrderingPolicy(), time.monotonic)

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def __iter__(self) -> Iterator[Entry]:
        """Waiting entries in the order they will run."""
        return iter(self.ordered())

    def ordered(self) -> list[Entry]:
        return self.ordering.order(self._waiting.values())  # type: ignore[return-value]

    def count(self, predicate: Callable[[Entry], bool]) -> int:
        return sum(1 for entry in self._waiting.values() if predicate(entry))

    def push(self, entry: Entry) -> None:
        self._waiting[entry.request_id] = entry
        self._update()

    def remove(self, request_id: str) -> Entry | None:
        entry = self._waiting.pop(request_id, None)
        self._update()
        return entry

    def pause(self) -> None:
        """Hold every waiting job (the running one finishes); positions keep flowing."""
        self.paused = True
        self._update()

    def resume(self) -> None:
        self.paused = False
        self.draining = False
        self._update()

    def _update(self) -> None:
        if self._waiting and not self.paused:
            self._runnable.set()
        else:
            self._runnable.clear()

    def drop_generation_before(self, generation: int) -> list[Entry]:
        stale = [e for e in self._waiting.values() if e.generation < generation]
        for entry in stale:
            self.remove(entry.request_id)
        return stale

    async def pop(self, loaded_model: Callable[[], str | None] = lambda: None) -> Entry:
        """The entry to run next (by the ordering policy), once there is one."""
        while not self._runnable.is_set():
            await self._runnable.wait()
        chosen = self.ordering.choose(self._waiting.values(), loaded_model())
        self.remove(chosen.request_id)
        return chosen  # type: ignore[return-value]

    def ahead_of(self, request_id: str) -> list[Entry] | None:
        """The entries that will run before this one; None if it is not waiting."""
        if request_id not in self._waiting:
            return None
        ahead: list[Entry] = []
        for entry in self.ordered():
            if entry.request_id == request_id:
                return ahead
            ahead.append(entry)
        return None

    def positions(self, running: bool) -> list[tuple[Entry, int]]:
        # Position 0 means running; while paused nothing is, so the head waits at 1.
        ahead = 1 if running or self.paused else 0
        return [(entry, ahead + index) for index, entry in enumerate(self.ordered())]
