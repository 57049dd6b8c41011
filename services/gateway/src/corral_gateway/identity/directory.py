"""Where the gateway's identity questions go: the keys, the shared counters, the audit log.

`KeyDirectory` is the one interface the gate and the key routes use; `StoreKeyDirectory` asks
the session store over RPC (`corral_common.contracts.identity`). Tests hand the gate an
in-process implementation instead.
"""

from __future__ import annotations

from typing import Protocol

from corral_common.contracts.identity import (
    IDENTITY,
    AuditEntry,
    AuditList,
    AuditQuery,
    CounterSpec,
    CounterValue,
    CountParams,
    KeyCreate,
    KeyInfo,
    KeyList,
    KeyLookup,
    KeyQuery,
    KeyRef,
)
from corral_common.rpc import RpcClient


class KeyDirectory(Protocol):
    async def resolve(self, key_hash: str) -> KeyInfo | None:
        """The key stored under this hash (revoked and expired ones as they are), or None."""

    async def count(
        self, subject: str, counters: list[CounterSpec], now: float
    ) -> list[CounterValue]:
        """Add to the subject's fixed-window counters; their totals after the call."""

    async def audit(self, entry: AuditEntry) -> None: ...

    async def create_key(self, params: KeyCreate) -> KeyInfo: ...

    async def list_keys(self, query: KeyQuery) -> KeyList: ...

    async def revoke_key(self, ref: KeyRef) -> KeyInfo:
        """The revoked key; `key_not_found` (404) for an unknown id."""

    async def audit_list(self, query: AuditQuery) -> AuditList: ...


class StoreKeyDirectory:
    """The session store's `IDENTITY` methods."""

    def __init__(self, rpc: RpcClient) -> None:
        self._rpc = rpc

    async def resolve(self, key_hash: str) -> KeyInfo | None:
        return (await self._rpc.call(IDENTITY.resolve_key, KeyLookup(key_hash=key_hash))).key

    async def count(
        self, subject: str, counters: list[CounterSpec], now: float
    ) -> list[CounterValue]:
        params = CountParams(subject=subject, counters=counters, now=now)
        return (await self._rpc.call(IDENTITY.count, params)).counters

    async def audit(self, entry: AuditEntry) -> None:
        await self._rpc.call(IDENTITY.audit, entry)

    async def create_key(self, params: KeyCreate) -> KeyInfo:
        return await self._rpc.call(IDENTITY.create_key, params)

    async def list_keys(self, query: KeyQuery) -> KeyList:
        return await self._rpc.call(IDENTITY.list_keys, query)

    async def revoke_key(self, ref: KeyRef) -> KeyInfo:
        return await self._rpc.call(IDENTITY.revoke_key, ref)

    async def audit_list(self, query: AuditQuery) -> AuditList:
        return await self._rpc.call(IDENTITY.audit_list, query)
