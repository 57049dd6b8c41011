"""The ordered structure of admitted jobs waiting for the backend.

Pure bookkeeping, no I/O: the admission callback pushes, the executor pops from the head, a
cancel removes. Position = jobs ahead: the running one (if any) plus those earlier in the lane.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from corral_common.messages import Job


@dataclass(eq=False)
class Entry:
    job: Job
    # The AMQP delivery to ack once the job's final event is out; opaque here.
    delivery: Any
    # Which broker connection the delivery belongs to: after a reconnect the broker redelivers,
    # and entries from the old connection must not run.
    generation: int
    admitted_at: float
    estimate_ms: int = 0
    last_sent: tuple[int, int] | None = field(default=None)
    last_sent_at: float = 0.0

    @property
    def request_id(self) -> str:
        return self.job.request_id


class Lane:
    def __init__(self) -> None:
        self._waiting: OrderedDict[str, Entry] = OrderedDict()
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._waiting.values()))

    def push(self, entry: Entry) -> None:
        self._waiting[entry.request_id] = entry
        self._nonempty.set()

    def remove(self, request_id: str) -> Entry | None:
        entry = self._waiting.pop(request_id, None)
        if not self._waiting:
            self._nonempty.clear()
        return entry

    def drop_generation_before(self, generation: int) -> list[Entry]:
        stale = [e for e in self._waiting.values() if e.generation < generation]
        for entry in stale:
            self.remove(entry.request_id)
        return stale

    async def pop(self) -> Entry:
        while not self._waiting:
            await self._nonempty.wait()
        _, entry = self._waiting.popitem(last=False)
        if not self._waiting:
            self._nonempty.clear()
        return entry

    def positions(self, running: bool) -> list[tuple[Entry, int]]:
        ahead = 1 if running else 0
        return [(entry, ahead + index) for index, entry in enumerate(self._waiting.values())]
