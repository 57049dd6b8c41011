"""An in-process key directory for the gateway's identity tests: the `IDENTITY` methods kept in
memory with the session store's semantics (fixed windows starting at multiples of their length,
totals after the add, revoked keys kept and listed on request), and a switch that makes it
unreachable as an RPC to a store that is down is."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from corral_common.contracts.identity import (
    AuditEntry,
    AuditList,
    AuditQuery,
    CounterSpec,
    CounterValue,
    KeyCreate,
    KeyInfo,
    KeyList,
    KeyQuery,
    KeyRef,
)
from corral_common.errors import CorralError, ErrorType


@dataclass
class Clock:
    """Wall time that moves only when a test says so."""

    now: float = 1_700_000_010.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class MemoryDirectory:
    clock: Clock
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    """By hash."""
    counters: dict[tuple[str, str, int], int] = field(default_factory=dict)
    audits: list[AuditEntry] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    down: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise CorralError(
                ErrorType.INTERNAL_ERROR,
                "the session-store service did not answer: no instance of it is running",
                status=503,
            )

    async def resolve(self, key_hash: str) -> KeyInfo | None:
        self._call("resolve_key")
        return self.keys.get(key_hash)

    async def count(
        self, subject: str, counters: list[CounterSpec], now: float
    ) -> list[CounterValue]:
        self._call("count")
        values = []
        for spec in counters:
            start = int(now // spec.window_s) * spec.window_s
            slot = (subject, spec.name, start)
            self.counters[slot] = self.counters.get(slot, 0) + spec.add
            values.append(
                CounterValue(
                    name=spec.name, count=self.counters[slot], reset_at=start + spec.window_s
                )
            )
        return values

    async def audit(self, entry: AuditEntry) -> None:
        self._call("audit")
        self.audits.append(entry)

    async def create_key(self, params: KeyCreate) -> KeyInfo:
        self._call("create_key")
        info = KeyInfo(
            id=f"key_{next(self._ids):04x}",
            created_at=self.clock(),
            **params.model_dump(exclude={"key_hash"}),
        )
        self.keys[params.key_hash] = info
        return info

    async def list_keys(self, query: KeyQuery) -> KeyList:
        self._call("list_keys")
        listed = [k for k in self.keys.values() if query.include_revoked or k.revoked_at is None]
        return KeyList(keys=listed[query.offset : query.offset + query.limit], total=len(listed))

    async def revoke_key(self, ref: KeyRef) -> KeyInfo:
        self._call("revoke_key")
        for key_hash, info in self.keys.items():
            if info.id == ref.key_id:
                if info.revoked_at is None:
                    info = info.model_copy(update={"revoked_at": self.clock()})
                    self.keys[key_hash] = info
                return info
        raise CorralError(ErrorType.KEY_NOT_FOUND, f"no key {ref.key_id}")

    async def audit_list(self, query: AuditQuery) -> AuditList:
        self._call("audit_list")
        entries: list[dict[str, Any]] = [
            e.model_dump()
            for e in reversed(self.audits)
            if query.actor is None or e.actor == query.actor
        ]
        return AuditList(
            entries=entries[query.offset : query.offset + query.limit], total=len(entries)
        )

    def add_key(self, key_hash: str, **fields: Any) -> KeyInfo:
        """A stored key, as the store would hold it after `create_key`."""
        info = KeyInfo.model_validate(
            {
                "id": f"key_{next(self._ids):04x}",
                "prefix": "crl_test",
                "scope": "user",
                "created_at": self.clock(),
                **fields,
            }
        )
        self.keys[key_hash] = info
        return info


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(clock: Clock) -> MemoryDirectory:
    return MemoryDirectory(clock)
