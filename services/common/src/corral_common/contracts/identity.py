"""Identity's RPC methods (service `session-store`, which owns MongoDB): API keys, the shared
rate-limit counters, and the audit log. Served by `corral_session_store.identity_rpc`, called
by the gateways. All are on the `identity` lane, apart from context assembly and slow reads,
because a gateway asks on (nearly) every request.

The plaintext key never crosses the broker: the gateway generates it (`corral_common.api_keys`),
shows it to the caller once, and sends only its hash and display prefix.

    create_key   KeyCreate -> KeyInfo
    list_keys    KeyQuery -> KeyList
    revoke_key   KeyRef -> KeyInfo         (404 key_not_found for an unknown id)
    resolve_key  KeyLookup -> Resolved     (`key` is None when no such hash is stored)
    count        CountParams -> Counts     fixed-window counters, incremented atomically
    audit        AuditEntry -> Empty
    audit_list   AuditQuery -> AuditList

After a key is created or revoked the store publishes a `KeyChanged` on the events exchange
(`KEYS_CHANGED_KEY`), so every gateway drops what it cached about that key at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field

from corral_common.contracts import SESSION_STORE_SERVICE, Empty, Method, Params, Result
from corral_common.messages import Priority, Wire

IDENTITY_LANE = "identity"
KEYS_CHANGED_KEY = "keys.changed"
"""Routing key of `KeyChanged` on `corral.events`, bound by every gateway."""

Scope = Literal["user", "admin"]
SCOPES: tuple[Scope, ...] = ("user", "admin")
MAX_LABEL = 200
MAX_LIST = 500
MAX_COUNTERS = 8
# A counter window is at most a day; its documents are kept one window past their end.
MAX_WINDOW_S = 86_400

Label = Annotated[str, Field(max_length=MAX_LABEL)]
Principal = Annotated[str, Field(min_length=1, max_length=256)]
KeyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
KeyId = Annotated[str, Field(pattern=r"^key_[0-9a-f]{1,64}$")]
Limit = Annotated[int, Field(ge=0, le=1_000_000_000)]


class KeyLimits(Result):
    """Per-key overrides of the gateway's default limits: None = the default, 0 = no limit."""

    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    tokens_per_day: Limit | None = None
    max_queued: Limit | None = None


class KeyCreate(Params):
    key_hash: KeyHash
    prefix: Annotated[str, Field(min_length=4, max_length=16)]
    scope: Scope
    label: Label | None = None
    owner: Principal | None = None
    """Whose key it is: keys with the same owner share their conversations (a rotated key keeps
    them); without one, the key is its own owner."""
    expires_at: float | None = None
    """Epoch seconds after which the key stops working."""
    max_priority: Priority | None = None
    limits: KeyLimits = KeyLimits()
    created_by: Principal | None = None


class KeyInfo(Result):
    """A key as listed and resolved: everything but the secret."""

    id: str
    prefix: str
    scope: Scope
    label: str | None = None
    owner: str | None = None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    max_priority: Priority | None = None
    limits: KeyLimits = KeyLimits()
    created_by: str | None = None


class KeyQuery(Params):
    include_revoked: bool = False
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 100
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class KeyList(Result):
    keys: list[KeyInfo]
    total: int


class KeyRef(Params):
    key_id: KeyId
    revoked_by: Principal | None = None


class KeyLookup(Params):
    key_hash: KeyHash


class Resolved(Result):
    key: KeyInfo | None
    """None when no key has this hash; a revoked or expired key is returned as it is (the
    gateway refuses it)."""


class CounterSpec(Params):
    name: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    window_s: Annotated[int, Field(ge=1, le=MAX_WINDOW_S)]
    add: Annotated[int, Field(ge=0, le=1_000_000_000)] = 0
    """0 reads the counter without changing it."""


class CountParams(Params):
    subject: Principal
    """Whose counters: `key:<principal>` or `ip:<address>`."""
    counters: Annotated[list[CounterSpec], Field(min_length=1, max_length=MAX_COUNTERS)]
    now: float | None = None
    """The caller's clock (epoch seconds), so every replica puts a moment in the same window."""


class CounterValue(Result):
    name: str
    count: int
    """The window's total after this call's `add`."""
    reset_at: float
    """Epoch seconds when the window ends."""


class Counts(Result):
    counters: list[CounterValue]


class AuditEntry(Params):
    actor: Principal
    """The key id that acted (`operator` for CORRAL_ADMIN_KEY, `anonymous` with auth off)."""
    action: Annotated[str, Field(min_length=1, max_length=64)]
    """`<METHOD> <route>`, e.g. `POST /admin/keys`."""
    target: Annotated[str, Field(max_length=512)] | None = None
    status: Annotated[int, Field(ge=100, le=599)]
    ip: Annotated[str, Field(max_length=64)] | None = None
    request_id: Annotated[str, Field(max_length=128)] | None = None
    at: float | None = None


class AuditQuery(Params):
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 100
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    actor: Principal | None = None


class AuditList(Result):
    entries: list[dict[str, Any]]
    """Newest first: `{at, actor, action, target, status, ip, request_id}`."""
    total: int


class KeyChanged(Wire):
    """Broadcast after a key is created or revoked."""

    kind: Literal["key_changed"] = "key_changed"
    key_id: str
    key_hash: str


class IdentityApi:
    """The declarations, one attribute per method."""

    service: Final = SESSION_STORE_SERVICE
    create_key: Final = Method(
        SESSION_STORE_SERVICE, "create_key", KeyCreate, KeyInfo, IDENTITY_LANE
    )
    list_keys: Final = Method(SESSION_STORE_SERVICE, "list_keys", KeyQuery, KeyList, IDENTITY_LANE)
    revoke_key: Final = Method(SESSION_STORE_SERVICE, "revoke_key", KeyRef, KeyInfo, IDENTITY_LANE)
    resolve_key: Final = Method(
        SESSION_STORE_SERVICE, "resolve_key", KeyLookup, Resolved, IDENTITY_LANE
    )
    count: Final = Method(SESSION_STORE_SERVICE, "count", CountParams, Counts, IDENTITY_LANE)
    audit: Final = Method(SESSION_STORE_SERVICE, "audit", AuditEntry, Empty, IDENTITY_LANE)
    audit_list: Final = Method(
        SESSION_STORE_SERVICE, "audit_list", AuditQuery, AuditList, IDENTITY_LANE
    )


IDENTITY = IdentityApi()
