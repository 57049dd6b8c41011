"""Request rate limits and the refusal of addresses that keep failing to authenticate.

Both count in fixed windows held by the session store (`IDENTITY.count`, atomic updates in
MongoDB), so every gateway replica sees the same totals. Requests count against the caller's
subject (`key:<principal>`, or `ip:<address>` for anonymous callers), once per request
(a stream included); the limit is the key's own `requests_per_minute` when it has one, else the
gateway's default for keys or for anonymous callers; 0 means none, and then nothing is counted
at all.

Failed authentications count against `ip:<address>`. Past `auth_failures_per_minute` (the
failure that goes beyond it is answered 429, not 401) the address is refused (429) until its
window ends, remembered here from the returned count, so neither a refused attempt nor a good
request pays an extra lookup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral_common.contracts.identity import CounterValue
from corral_gateway.identity.principal import Caller

WINDOW_S = 60
REQUESTS_COUNTER = "requests"
AUTH_FAILURES_COUNTER = "auth_failures"
# Blocked addresses remembered at most (the oldest go first; each entry lasts one window).
BLOCKED_REMEMBERED = 100_000


def request_limit(caller: Caller, keyed_default: int, anonymous_default: int) -> int:
    """Requests a minute allowed to this caller (0: no limit)."""
    own = caller.limits.requests_per_minute
    if own is not None:
        return own
    return keyed_default if caller.key_id is not None else anonymous_default


def retry_after_s(reset_at: float, now: float) -> int:
    """Whole seconds until the window ends, at least 1."""
    return max(1, math.ceil(reset_at - now))


@dataclass(frozen=True)
class Allowance:
    """Where a caller stands against a limit after this request was counted."""

    limit: int
    count: int
    reset_at: float
    """Epoch seconds when the window ends."""

    @classmethod
    def of(cls, limit: int, counter: CounterValue) -> Allowance:
        return cls(limit, counter.count, counter.reset_at)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


class BlockedAddresses:
    """Addresses refused until their failed-authentication window ends."""

    def __init__(self, limit: int, wall: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._wall = wall
        self._until: dict[str, float] = {}

    def blocked_until(self, address: str) -> float | None:
        until = self._until.get(address)
        if until is None:
            return None
        if until <= self._wall():
            del self._until[address]
            return None
        return until

    def note(self, address: str, failures: CounterValue) -> bool:
        """Take the address's failure count after one more; True when it is past the limit
        (and so refused until the window ends)."""
        if self.limit <= 0 or failures.count <= self.limit:
            return False
        self._until.pop(address, None)
        self._until[address] = failures.reset_at
        while len(self._until) > BLOCKED_REMEMBERED:
            del self._until[next(iter(self._until))]
        return True
