"""Who is calling: the identity every handler reads from its request.

The surface's guard (surfaces.py) resolves it before the handler runs, from the request's key
(auth on) or its address (auth off), and puts it under `CALLER`. Handlers never look at
`Authorization` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from corral_common.contracts.identity import KeyLimits, Scope
from corral_common.messages import Priority

Access = Literal["open", "user", "admin"]
"""What a route asks of its caller: nothing, a user key (or an admin one), an admin key."""


@dataclass(frozen=True)
class Caller:
    """The caller of one request.

    `key_id` is None for anonymous callers (auth off). `principal` is whose data this is:
    the key's owner when it names one, else the key id; None for admins and anonymous callers,
    who are not scoped (`owner=None` everywhere means "everything", as with auth off).
    `subject` is what its limits count against: `key:<principal or key id>` or `ip:<address>`.
    `fair_share_key` is what the queue's turn-taking and per-caller cap use.
    """

    scope: Scope | None
    address: str
    key_id: str | None = None
    principal: str | None = None
    prefix: str | None = None
    max_priority: Priority | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    client_id: str | None = None
    """`X-Client-Id`, honoured only with auth off."""

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def owner(self) -> str | None:
        """The `owner` that scopes reads and changes of sessions (history, list, search,
        stats, rename, delete): None (everything) for admins and with auth off, the principal
        otherwise. What a caller *writes* (a job's turn, a new session) is always owned by its
        `principal`, admins' too."""
        return None if self.is_admin else self.principal

    @property
    def subject(self) -> str:
        if self.key_id is not None:
            return f"key:{self.principal or self.key_id}"
        return f"ip:{self.address}"

    @property
    def fair_share_key(self) -> str | None:
        if self.key_id is not None:
            return self.principal or self.key_id
        return self.client_id

    @property
    def actor(self) -> str:
        """Who acted, for the audit log."""
        return self.key_id or "anonymous"


CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    """The request's caller, as the surface's guard resolved it; for a request no guard saw
    (auth off, tests of a bare handler), an anonymous caller at the request's address."""
    caller = request.get(CALLER)
    if caller is None:
        caller = Caller(
            scope=None,
            address=request.remote or "unknown",
            client_id=request.headers.get("X-Client-Id") or None,
        )
    return caller
