"""Generated-token quotas: how many tokens a caller may have generated in the last minute and
day (fixed windows), checked before a generation is submitted and charged when it ends.

The limits are the caller's key's own `tokens_per_minute` / `tokens_per_day` when it has them,
else the gateway's settings; 0 means none, and a caller with neither costs no RPC at all. The
counters (`tokens_minute`, 60 s; `tokens_day`, a day) are the session store's shared ones
(`IDENTITY.count`, on the caller's subject), so every gateway replica sees the same usage.

Checking reads the usage (`add=0`): at or over a limit the generation is refused (429
`rate_limit_exceeded`, `Retry-After` until the window ends). When it ends, its `eval_count` is
added to the counters in the background: the answer never waits for it, so a burst of requests
checked together may all run and pass the limit, which then holds them back until the window
ends. If the counters cannot be reached, the check lets the request go (fail open, logged and
counted) and a lost charge is logged.

`JobTicket` (ticket.py) is where a quota is checked and charged; a route only hands it the one
`quota_of` its caller.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from corral_common.contracts.identity import IDENTITY, CounterSpec, CountParams, Counts
from corral_common.errors import CorralError, ErrorType
from corral_gateway.identity import metrics
from corral_gateway.identity.limits import retry_after_s
from corral_gateway.identity.principal import Caller
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import Gateway

log = structlog.get_logger(__name__)

# The shared counters' one call (the session store's `IDENTITY.count`, or a test's own).
Count = Callable[[CountParams], Awaitable[Counts]]


@dataclass(frozen=True)
class TokenLimit:
    counter: str
    window_s: int
    per: str
    """The window's name in messages ("minute", "day"); the limit's is `tokens_per_<per>`."""
    limit: int

    @property
    def name(self) -> str:
        return f"tokens_per_{self.per}"


@dataclass(frozen=True)
class TokenQuota:
    """One caller's token limits (only those set), and how to reach their counters."""

    subject: str
    limits: tuple[TokenLimit, ...]
    count: Count
    wall: Callable[[], float] = time.time

    async def check(self) -> None:
        """Raise 429 `rate_limit_exceeded` when the caller has used up a limit."""
        now = self.wall()
        try:
            counts = await self.count(self._params(0, now))
        except CorralError as exc:
            metrics.LIMITS_UNCHECKED.inc()
            log.warning("token quota unchecked: counters unreachable", error=exc.message)
            return
        used = {value.name: value for value in counts.counters}
        over = [
            (limit, used[limit.counter])
            for limit in self.limits
            if limit.counter in used and used[limit.counter].count >= limit.limit
        ]
        if not over:
            return
        # The request may go again once every window it exhausted has ended.
        limit, value = max(over, key=lambda pair: pair[1].reset_at)
        retry = retry_after_s(value.reset_at, now)
        metrics.RATE_LIMITED.labels(limit.name).inc()
        raise CorralError(
            ErrorType.RATE_LIMIT_EXCEEDED,
            f"token quota exceeded: {value.count} of {limit.limit} tokens per {limit.per} "
            f"used; retry in {retry} s",
            details={
                "limit": limit.name,
                "allowed": limit.limit,
                "used": value.count,
                "reset_at": value.reset_at,
                "retry_after_s": retry,
            },
            headers={"Retry-After": str(retry)},
        )

    async def charge(self, tokens: int) -> None:
        """Add a finished generation's tokens to every counter (never raises)."""
        if tokens <= 0:
            return
        try:
            await self.count(self._params(tokens, self.wall()))
        except CorralError as exc:
            log.warning("generated tokens not charged", tokens=tokens, error=exc.message)

    def _params(self, add: int, now: float) -> CountParams:
        return CountParams(
            subject=self.subject,
            counters=[
                CounterSpec(name=limit.counter, window_s=limit.window_s, add=add)
                for limit in self.limits
            ],
            now=now,
        )


def token_quota(caller: Caller, settings: GatewaySettings, count: Count) -> TokenQuota | None:
    """The caller's token quota; None when it has no token limit (nothing to count)."""
    own = caller.limits
    per_minute = _limit(own.tokens_per_minute, settings.tokens_per_minute)
    per_day = _limit(own.tokens_per_day, settings.tokens_per_day)
    limits = tuple(
        limit
        for limit in (
            TokenLimit("tokens_minute", 60, "minute", per_minute),
            TokenLimit("tokens_day", 86_400, "day", per_day),
        )
        if limit.limit > 0
    )
    return TokenQuota(caller.subject, limits, count) if limits else None


def quota_of(gateway: Gateway, caller: Caller) -> TokenQuota | None:
    """`token_quota` counted by the session store."""

    async def count(params: CountParams) -> Counts:
        return await gateway.rpc.call(IDENTITY.count, params)

    return token_quota(caller, gateway.settings, count)


def _limit(own: int | None, default: int) -> int:
    return default if own is None else own
