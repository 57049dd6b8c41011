"""What this gateway remembers about keys it has resolved, so a request costs no RPC.

A key is looked up by its hash in the session store (`IDENTITY.resolve_key`); the answer is kept
`key_cache_s` (5 s) for a key that exists and `UNKNOWN_TTL_S` (1 s) for one that does not (a
key created a moment ago must start working soon; a client repeating a wrong key must not cost
a lookup each time). After a key is created or revoked the store broadcasts `KeyChanged` and
every gateway evicts that hash at once (`evict`); the TTL bounds a lost broadcast.

Lookups are single-flight per hash: concurrent requests with one key share one lookup, which
runs as a task of its own, so a client that leaves does not cancel it for the others. A lookup
under way when its hash is evicted still answers its waiters but is not remembered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from corral_common.contracts.identity import KeyInfo

Resolver = Callable[[str], Coroutine[Any, Any, KeyInfo | None]]
Clock = Callable[[], float]

UNKNOWN_TTL_S = 1.0
# Any well-formed key can be made up (its checksum is no secret): the cache is bounded.
CAPACITY = 10_000


@dataclass(frozen=True)
class _Entry:
    key: KeyInfo | None
    until: float


class KeyCache:
    def __init__(
        self,
        resolve: Resolver,
        ttl_s: float,
        *,
        unknown_ttl_s: float = UNKNOWN_TTL_S,
        clock: Clock = time.monotonic,
        capacity: int = CAPACITY,
    ) -> None:
        self._resolve = resolve
        self.ttl_s = ttl_s
        self.unknown_ttl_s = min(unknown_ttl_s, ttl_s)
        self._clock = clock
        self._capacity = capacity
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Task[KeyInfo | None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, key_hash: str) -> tuple[bool, KeyInfo | None]:
        """(whether a fresh answer is remembered, that answer), without looking anything up."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return False, None
        if entry.until <= self._clock():
            del self._entries[key_hash]
            return False, None
        return True, entry.key

    async def get(self, key_hash: str) -> KeyInfo | None:
        """The key with this hash (None: no such key), remembered or looked up; the lookup's
        error (the store unreachable) is raised to every waiter and not remembered."""
        known, key = self.cached(key_hash)
        if known:
            return key
        task = self._pending.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._resolve(key_hash), name="resolve_key")
            self._pending[key_hash] = task
            # Registered before any waiter's: the answer is stored before they resume.
            task.add_done_callback(lambda done: self._settle(key_hash, done))
        return await asyncio.shield(task)

    def evict(self, key_hash: str) -> None:
        """Forget the key (it changed): the next request looks it up again."""
        self._entries.pop(key_hash, None)
        self._pending.pop(key_hash, None)

    def clear(self) -> None:
        self._entries.clear()
        self._pending.clear()

    def _settle(self, key_hash: str, task: asyncio.Task[KeyInfo | None]) -> None:
        if task.cancelled():
            self._forget(key_hash, task)
            return
        error = task.exception()  # retrieved, so an unawaited failure is not reported twice
        if self._pending.get(key_hash) is not task:
            return  # evicted while under way: the answer may be stale
        del self._pending[key_hash]
        if error is not None:
            return
        key = task.result()
        ttl = self.ttl_s if key is not None else self.unknown_ttl_s
        if ttl <= 0:
            return
        self._entries.pop(key_hash, None)
        self._entries[key_hash] = _Entry(key, self._clock() + ttl)
        while len(self._entries) > self._capacity:
            del self._entries[next(iter(self._entries))]

    def _forget(self, key_hash: str, task: asyncio.Task[KeyInfo | None]) -> None:
        if self._pending.get(key_hash) is task:
            del self._pending[key_hash]
