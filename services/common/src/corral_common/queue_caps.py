"""The per-caller queue cap: how many jobs one caller (API key or address) may have waiting.

The scheduler checks it when it admits a job (the lane knows every gateway's jobs); a gateway
checks it before it publishes one, counting its own callers' waiting jobs (caller_queues.py),
so a stream over the cap is refused with a 429 its client can back off on, before any byte of
a 200 has gone out. Both refuse in the same words.
"""

from __future__ import annotations

from corral_common.errors import CorralError, ErrorType


def cap_of(key_cap: int | None, default: int) -> int:
    """A caller's cap: its key's own (`Job.max_queued`) when it has one, else the default.
    0: no cap."""
    return default if key_cap is None else key_cap


def over_cap(queued: int, limit: int, retry_after_s: int) -> CorralError:
    """A caller with `queued` jobs waiting, at or over its `limit`."""
    return CorralError(
        ErrorType.RATE_LIMIT_EXCEEDED,
        f"too many queued requests: this client already has {queued} waiting (the limit is "
        f"{limit}); retry when one has finished",
        status=429,
        details={"queued": queued, "limit": limit, "retry_after_s": retry_after_s},
        headers={"Retry-After": str(retry_after_s)},
    )
