"""The turns being written in this process, one session's after another: `KeyedLocks`.

The turns consumer holds a session's lock from the moment a `done` is taken off the queue until
its turn is written (or given up), in delivery order. Context assembly asks `settled` first, so
it never reads a session between receipt of a turn and its write (half of the write applied:
the sequence number taken, the turn not inserted yet), and a chat that arrives while its
previous turn is being written here sees that turn. The wait is bounded: a database that keeps
failing holds a write for `CORRAL_TURN_RETRY_S`, longer than a chat can wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Counter

ASSEMBLY_WAITS = Counter(
    "corral_session_assembly_waits_total",
    "Context assemblies that waited for a turn of their session being written in this process",
    ["outcome"],
)


class KeyedLocks:
    """One FIFO lock per key, created on demand and dropped when nobody holds or awaits it.

    `hold(key)` must be entered without awaiting anything first: asyncio.Lock queues waiters
    in the order they call `acquire`, which is then the order the holders were called in.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def users(self, key: str) -> int:
        """How many hold or wait for `key`."""
        found = self._locks.get(key)
        return found[1] if found is not None else 0

    async def settled(self, key: str, timeout_s: float) -> bool:
        """Once every holder of `key` that was in line when called is done (at once, without
        awaiting, when there is none); False when `timeout_s` passed first."""
        if key not in self._locks:
            return True
        try:
            async with asyncio.timeout(timeout_s), self.hold(key):
                pass
        except TimeoutError:
            ASSEMBLY_WAITS.labels("timeout").inc()
            return False
        ASSEMBLY_WAITS.labels("waited").inc()
        return True

    def __len__(self) -> int:
        return len(self._locks)
