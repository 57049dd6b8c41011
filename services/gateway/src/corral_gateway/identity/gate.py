"""The gate every surface route passes (surfaces.Surface.guard): who is calling, may they use
this route, are they within their request rate; and the audit of admin actions after them.

- Auth off (`CORRAL_AUTH=off`): every caller is anonymous at its client address, with
  `X-Client-Id` as its fair-share key; no key header is looked at.
- Auth on: the key comes from `Authorization: Bearer` or `X-API-Key` (credentials.py). The
  operator key (`CORRAL_ADMIN_KEY`) is compared in constant time and is an admin caller
  `operator`. Any other key must be well formed (a garbage string is refused without any
  lookup), then is resolved by its hash (key_cache.py); unknown, revoked and expired keys are
  refused 401. With the store unreachable and the key not remembered: 503 (fail closed).
  A key without the route's scope: 403.
- Routes of access "open" (`/`, `/openapi.json`) take anyone and count nothing.
- Then the request counts against its caller's per-minute limit (limits.py); every answer of
  the request carries `X-RateLimit-*` (`RATE_LIMIT_HEADERS`, put on by `add_rate_limit_headers`),
  and past the limit it is refused 429 with `Retry-After`. With the store unreachable the
  request goes on (fail open, logged, `corral_rate_limit_unchecked_total`).

Refusals are `CorralError`s (401 unauthorized with `WWW-Authenticate`, 403 forbidden, 429
rate_limit_exceeded, 503), which each surface renders in its own shape. Nothing here logs a
presented key; only its display prefix may appear once it is known to be a key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import hdrs, web

from corral_common.api_keys import is_well_formed, key_hash, same_secret
from corral_common.contracts.identity import AuditEntry, CounterSpec, CounterValue, KeyInfo
from corral_common.errors import CorralError, ErrorType
from corral_common.supervision import Task, every
from corral_common.supervision import spawn as spawn_task
from corral_common.timeouts import within
from corral_gateway.identity.addresses import TrustedProxies
from corral_gateway.identity.credentials import CredentialError, FailureReason, presented_key
from corral_gateway.identity.directory import KeyDirectory
from corral_gateway.identity.exposure import operator_key
from corral_gateway.identity.key_cache import KeyCache
from corral_gateway.identity.limits import (
    AUTH_FAILURES_COUNTER,
    REQUESTS_COUNTER,
    WINDOW_S,
    Allowance,
    BlockedAddresses,
    request_limit,
    retry_after_s,
)
from corral_gateway.identity.metrics import (
    AUDIT_LOST,
    AUTH_FAILURES,
    LIMITS_UNCHECKED,
    RATE_LIMITED,
)
from corral_gateway.identity.principal import CALLER, Access, Caller
from corral_gateway.identity.request_counts import SharedCounts
from corral_gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

OPERATOR = "operator"
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="corral"'}
# How long a counter update may take before the request goes on without it; after a failure,
# counting pauses this long, so a store that is down costs each request nothing.
COUNT_TIMEOUT_S = 2.0
COUNT_PAUSE_S = 5.0
# Failed authentications that count towards refusing the address (a request without any key is
# not a guess).
GUESSES: frozenset[FailureReason] = frozenset(
    {"malformed", "conflicting", "unknown", "revoked", "expired"}
)
UNMODIFYING = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})

RATE_LIMIT_HEADERS = web.RequestKey("rate_limit_headers", dict[str, str])
AUDIT_TARGET = web.RequestKey("audit_target", str)
"""What an admin action acted on, when the route's path does not name it (a new key's id)."""

Spawner = Callable[[Coroutine[Any, Any, None]], None]


class Gatekeeper:
    def __init__(
        self,
        settings: GatewaySettings,
        directory: KeyDirectory | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        spawn: Spawner | None = None,
    ) -> None:
        self.auth_on = settings.auth == "on"
        self._operator_key = operator_key(settings)
        self.proxies = TrustedProxies.parse(settings.trusted_proxies)
        self.keyed_limit = settings.rate_limit_per_minute
        self.anonymous_limit = settings.anonymous_rate_limit_per_minute
        self.directory = directory
        self.keys = KeyCache(self._resolve, settings.key_cache_s, clock=clock)
        self.blocked = BlockedAddresses(settings.auth_failures_per_minute, wall)
        self._clock = clock
        self._wall = wall
        self._counts_paused_until = 0.0
        # Requests counted here and sent to the store in the background (request_counts.py);
        # None: each one counted in the store before its answer.
        self.counts_sync_s = settings.rate_limit_sync_ms / 1000
        self.counts = SharedCounts(self._count, wall) if self.counts_sync_s > 0 else None
        self._background: set[asyncio.Task[None]] = set()
        self._spawn: Spawner = spawn or self._spawn_kept

    def attach(self, directory: KeyDirectory, spawn: Spawner | None = None) -> None:
        """Connect the gate to the store once the gateway's broker is up (app.gateway_ctx)."""
        self.directory = directory
        if spawn is not None:
            self._spawn = spawn

    def tasks(self) -> list[Task]:
        """The gate's background work while the gateway runs (app.gateway_ctx)."""
        if self.counts is None:
            return []
        return [Task("rate-limit counts", self._share_counts)]

    async def _share_counts(self) -> None:
        assert self.counts is not None
        await every(
            self.counts_sync_s,
            self.counts.flush,
            skip_on=(),
            skipped="rate-limit counts not sent",
        )

    async def flush_counts(self) -> None:
        """Send what was counted here and not yet sent (on the way out)."""
        if self.counts is not None:
            await self.counts.flush()

    def now(self) -> float:
        """Wall-clock time, epoch seconds (expiries, counter windows)."""
        return self._wall()

    def key_changed(self, changed_hash: str) -> None:
        """A key was created or revoked somewhere (`KeyChanged`): forget it at once."""
        self.keys.evict(changed_hash)

    # --- admission ---------------------------------------------------------------------------

    async def admit(self, request: web.Request, access: Access) -> dict[str, str]:
        """Resolve the request's caller (under `CALLER`), check the route's access and the
        caller's rate; the rate-limit headers every answer of it carries. Raises the refusal."""
        address = self.proxies.client_address(
            request.remote, request.headers.getall("X-Forwarded-For", [])
        )
        if access == "open" or not self.auth_on:
            caller = Caller(
                scope=None,
                address=address,
                client_id=None if self.auth_on else request.headers.get("X-Client-Id") or None,
            )
            request[CALLER] = caller
            if access == "open":
                return {}
        else:
            caller = await self._authenticate(request, address)
            request[CALLER] = caller
            if access == "admin" and not caller.is_admin:
                raise CorralError(ErrorType.FORBIDDEN, "this route needs an admin key")
        headers = await self._count_request(caller)
        if headers:
            request[RATE_LIMIT_HEADERS] = headers
        return headers

    async def _authenticate(self, request: web.Request, address: str) -> Caller:
        try:
            key = presented_key(request.headers)
        except CredentialError as exc:
            raise await self._failure(address, exc.reason, exc.message) from None
        if key is None:
            raise await self._failure(
                address,
                "missing",
                "an API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key'",
            )
        if self._operator_key is not None and same_secret(key, self._operator_key):
            return Caller(scope="admin", address=address, key_id=OPERATOR, principal=OPERATOR)
        hashed = key_hash(key) if is_well_formed(key) else None
        until = self.blocked.blocked_until(address)
        if until is not None:
            # No lookup for an address that keeps failing, but a key this gateway knows to be
            # good still works (clients behind one address must not lock each other out).
            known, info = self.keys.cached(hashed) if hashed is not None else (False, None)
            if not known or info is None or self._unusable(info) is not None:
                AUTH_FAILURES.labels(reason="blocked").inc()
                raise self._blocked(until)
        if hashed is None:
            raise await self._failure(address, "malformed", "invalid API key")
        try:
            info = await self.keys.get(hashed)
        except CorralError as exc:
            if exc.status != 503:
                raise
            log.warning("API key not checked: the key store is unreachable", error=exc.message)
            raise CorralError(
                ErrorType.INTERNAL_ERROR,
                "the API key cannot be checked now: the key store is unreachable",
                status=503,
                headers={"Retry-After": "5"},
            ) from None
        if info is None:
            raise await self._failure(address, "unknown", "invalid API key")
        reason = self._unusable(info)
        if reason is not None:
            raise await self._failure(address, reason, f"API key {reason}")
        return Caller(
            scope=info.scope,
            address=address,
            key_id=info.id,
            principal=info.owner or info.id,
            prefix=info.prefix,
            max_priority=info.max_priority,
            limits=info.limits,
        )

    def _unusable(self, info: KeyInfo) -> FailureReason | None:
        if info.revoked_at is not None:
            return "revoked"
        if info.expires_at is not None and info.expires_at <= self._wall():
            return "expired"
        return None

    async def _failure(self, address: str, reason: FailureReason, message: str) -> CorralError:
        """Count a failed authentication; the error to answer it with: 401, or 429 once the
        address is past its failures a minute."""
        AUTH_FAILURES.labels(reason=reason).inc()
        log.info("authentication refused", reason=reason, address=address)
        if reason in GUESSES and self.blocked.limit > 0:
            counted = await self._count(
                f"ip:{address}", CounterSpec(name=AUTH_FAILURES_COUNTER, window_s=WINDOW_S, add=1)
            )
            if counted is not None and self.blocked.note(address, counted):
                log.warning("address refused after failed authentications", address=address)
                return self._blocked(counted.reset_at)
        return CorralError(ErrorType.UNAUTHORIZED, message, headers=dict(WWW_AUTHENTICATE))

    def _blocked(self, until: float) -> CorralError:
        RATE_LIMITED.labels(limit=AUTH_FAILURES_COUNTER).inc()
        wait = retry_after_s(until, self._wall())
        return CorralError(
            ErrorType.RATE_LIMIT_EXCEEDED,
            f"too many failed authentications from this address; try again in {wait} s",
            details={"retry_after_s": wait},
            headers={"Retry-After": str(wait)},
        )

    async def _resolve(self, hashed: str) -> KeyInfo | None:
        if self.directory is None:
            raise CorralError(
                ErrorType.INTERNAL_ERROR, "the gateway is not connected yet", status=503
            )
        return await self.directory.resolve(hashed)

    # --- rate limits -------------------------------------------------------------------------

    async def _count_request(self, caller: Caller) -> dict[str, str]:
        limit = request_limit(caller, self.keyed_limit, self.anonymous_limit)
        if limit <= 0:
            return {}
        if self.counts is not None:
            counted = await self.counts.add(caller.subject)
        else:
            counted = await self._count(
                caller.subject, CounterSpec(name=REQUESTS_COUNTER, window_s=WINDOW_S, add=1)
            )
        if counted is None:
            return {}
        allowance = Allowance.of(limit, counted)
        headers = allowance.headers()
        if allowance.exceeded:
            RATE_LIMITED.labels(limit=REQUESTS_COUNTER).inc()
            wait = retry_after_s(allowance.reset_at, self._wall())
            raise CorralError(
                ErrorType.RATE_LIMIT_EXCEEDED,
                f"rate limit of {limit} requests per minute reached; try again in {wait} s",
                details={"limit": limit, "retry_after_s": wait},
                headers={**headers, "Retry-After": str(wait)},
            )
        return headers

    async def _count(
        self, subject: str, counter: CounterSpec, at: float | None = None
    ) -> CounterValue | None:
        """One counter of the subject after adding to it (at `at`, epoch seconds, else now);
        None when the store cannot be reached (the caller goes on unchecked)."""
        if self.directory is None or self._clock() < self._counts_paused_until:
            LIMITS_UNCHECKED.inc()
            return None
        try:
            values = await within(
                self.directory.count(subject, [counter], at or self._wall()), COUNT_TIMEOUT_S
            )
        except (CorralError, TimeoutError) as exc:
            self._counts_paused_until = self._clock() + COUNT_PAUSE_S
            LIMITS_UNCHECKED.inc()
            log.warning("rate limits not checked: the counter store is unreachable", error=str(exc))
            return None
        return next((v for v in values if v.name == counter.name), None)

    # --- audit -------------------------------------------------------------------------------

    def audits(self, request: web.Request, access: Access) -> bool:
        return access == "admin" and request.method not in UNMODIFYING

    def audit(self, request: web.Request, status: int, request_id: str | None) -> None:
        """Write the audit record of an admin action, in the background; never fails it.
        Only a caller the gate resolved is recorded (a 401 is not an action)."""
        caller = request.get(CALLER)
        if caller is None or self.directory is None:
            return
        route = request.match_info.route.resource
        template = route.canonical if route is not None else request.path
        target = request.get(AUDIT_TARGET) or next(iter(request.match_info.values()), None)
        try:
            entry = AuditEntry(
                actor=caller.actor,
                action=f"{request.method} {template}"[:64],
                target=target[:512] if target else None,
                status=status,
                ip=caller.address[:64],
                request_id=request_id[:128] if request_id else None,
                at=self._wall(),
            )
        except CorralError as exc:
            AUDIT_LOST.inc()
            log.warning("audit record not written", error=exc.message)
            return
        self._spawn(self._write_audit(self.directory, entry))

    async def _write_audit(self, directory: KeyDirectory, entry: AuditEntry) -> None:
        try:
            await directory.audit(entry)
        except (CorralError, TimeoutError) as exc:
            AUDIT_LOST.inc()
            log.warning("audit record not written", action=entry.action, error=str(exc))

    def _spawn_kept(self, coro: Coroutine[Any, Any, None]) -> None:
        spawn_task(coro, name="audit", keep=self._background)


GATEKEEPER = web.AppKey("gatekeeper", Gatekeeper)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request's rate-limit headers on every answer, streams too."""
    headers = request.get(RATE_LIMIT_HEADERS)
    if headers:
        response.headers.update(headers)
