"""The identity RPC methods (corral_common.contracts.identity), served on the `identity` lane
(`rpc.session-store.identity`): API keys, the shared rate-limit counters and the audit log.

After a key is created or revoked, a `KeyChanged` goes out on `corral.events` so every gateway
drops what it cached about the key at once. That broadcast is best-effort: the change is
already stored, so failing the call would only tell the admin something false; a gateway that
missed it forgets its cached answer within its `key_cache_s` anyway.
"""

from __future__ import annotations

from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.broker import Broker, encode
from corral_common.contracts import SESSION_STORE_SERVICE, Empty
from corral_common.contracts.identity import (
    IDENTITY,
    KEYS_CHANGED_KEY,
    AuditEntry,
    AuditList,
    AuditQuery,
    CountParams,
    Counts,
    KeyChanged,
    KeyCreate,
    KeyInfo,
    KeyList,
    KeyLookup,
    KeyQuery,
    KeyRef,
    Resolved,
)
from corral_common.rpc import Handler, MethodTable
from corral_session_store import metrics
from corral_session_store.audit import AuditLog
from corral_session_store.counters import Counters
from corral_session_store.keys import KeyStore
from corral_session_store.rpc_api import database_errors

log = structlog.get_logger(__name__)

Document = dict[str, Any]


class IdentityStore:
    """The identity collections of one database."""

    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.keys = KeyStore(db)
        self.counters = Counters(db)
        self.audit = AuditLog(db)

    async def ensure_indexes(self) -> None:
        """Idempotent; run at start-up by every replica."""
        await self.keys.ensure_indexes()
        await self.counters.ensure_indexes()
        await self.audit.ensure_indexes()


class KeyAnnouncer:
    """Tells every gateway that a key changed (best-effort, never raises)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def changed(self, key_id: str, key_hash: str) -> None:
        event = KeyChanged(key_id=key_id, key_hash=key_hash)
        try:
            await self.broker.publish_event(KEYS_CHANGED_KEY, encode(event), durable=False)
        except Exception as exc:
            metrics.KEY_BROADCAST_FAILURES.inc()
            log.warning(
                "key change not broadcast; gateways notice when their cache expires",
                key_id=key_id,
                error=str(exc) or type(exc).__name__,
            )


def identity_methods(identity: IdentityStore, announcer: KeyAnnouncer) -> dict[str, Handler]:
    table = MethodTable(SESSION_STORE_SERVICE)

    @table.serves(IDENTITY.create_key)
    async def create_key(p: KeyCreate) -> KeyInfo:
        info = await identity.keys.create(p)
        log.info("key created", key_id=info.id, scope=info.scope, created_by=p.created_by)
        await announcer.changed(info.id, p.key_hash)
        return info

    @table.serves(IDENTITY.list_keys)
    async def list_keys(p: KeyQuery) -> KeyList:
        return await identity.keys.list(p)

    @table.serves(IDENTITY.revoke_key)
    async def revoke_key(p: KeyRef) -> KeyInfo:
        info, key_hash = await identity.keys.revoke(p)
        log.info("key revoked", key_id=info.id, revoked_by=p.revoked_by)
        await announcer.changed(info.id, key_hash)
        return info

    @table.serves(IDENTITY.resolve_key)
    async def resolve_key(p: KeyLookup) -> Resolved:
        return Resolved(key=await identity.keys.resolve(p.key_hash))

    @table.serves(IDENTITY.count)
    async def count(p: CountParams) -> Counts:
        return Counts(counters=await identity.counters.count(p.subject, p.counters, p.now))

    @table.serves(IDENTITY.audit)
    async def audit(p: AuditEntry) -> Empty:
        await identity.audit.write(p)
        return Empty()

    @table.serves(IDENTITY.audit_list)
    async def audit_list(p: AuditQuery) -> AuditList:
        return await identity.audit.list(p)

    return {name: database_errors(handler) for name, handler in table.handlers.items()}
