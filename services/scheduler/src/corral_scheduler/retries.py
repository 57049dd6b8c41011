"""Retrying a backend that is not ready: which failures, how long to wait, how many times.

What is retried: only a failure that proves the backend never started the work, and only
before its response began. The connection was refused (nothing listens: the backend is
restarting), connecting timed out, the connection was reset before any response came (the
backend went away with the request), or the backend, or a proxy in front of it, answered 502 or
503 (Ollama's own 503 is "server busy": nothing ran). Never a read timeout (the backend may
still be working on it), never a 504 (a proxy gave up on a backend that may still be working),
never an `{"error"}` line or a cut after the response began: a generation that may have started
is never sent twice, so the backend never runs two at once and no answer is generated twice.
The executor retries only the opening of a generation; once it has a response, this module
has no say.

How long: the wait before retry n (0-based) is drawn uniformly from [0, min(cap, base * 2**n)],
"full jitter" (Marc Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog): the
upper bounds double from `retry_backoff` (`retry_backoff=2.0`: 2 s, 4 s, 8 s, 16 s, 32 s) and the
draw spreads out the clients of a backend that comes back, instead of sending them all at
once. Pure: the random source is injected, so the schedule is testable exactly.

How many: `max_retries` retries (attempts = retries + 1), the request's own when it names one
(capped by `max_retries_limit`), else the scheduler's default; and never past the request's
own deadline: a retry that could not start before `Job.finish_by` is not made, and the last
failure is the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Job

# Statuses that say the backend (or the proxy before it) did not take the request.
RETRYABLE_STATUSES = frozenset({502, 503})
# 2**n stops growing long before this; it only keeps the arithmetic finite.
MAX_EXPONENT = 60


@dataclass(frozen=True)
class RetryPolicy:
    """One job's retry terms: how many retries, and the backoff's base and cap (seconds)."""

    max_retries: int
    base_s: float
    cap_s: float

    def ceiling_s(self, retry: int) -> float:
        """The longest wait before retry `retry` (0-based): min(cap, base * 2**retry)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(retry, MAX_EXPONENT))

    def delay_s(self, retry: int, random: Callable[[], float]) -> float:
        """The wait before retry `retry`: full jitter, uniform in [0, ceiling]. `random`
        returns a float in [0, 1), as `random.random` does."""
        return self.ceiling_s(retry) * random()


@dataclass(frozen=True)
class RetryLimits:
    """The scheduler's retry settings, and how they bound a request's own terms."""

    # Retries when a request names none (CORRAL_MAX_RETRIES); 0 turns retrying off.
    max_retries: int = 3
    # The most retries a request may ask for.
    max_retries_limit: int = 10
    # The backoff's base (CORRAL_RETRY_BACKOFF_S) and the cap on any one wait.
    backoff_s: float = 1.0
    backoff_max_s: float = 10.0

    def for_job(self, job: Job) -> RetryPolicy:
        """The job's terms: its own `max_retries` and `retry_backoff_s` when it names them,
        bounded by the limits; the defaults otherwise."""
        retries = (
            self.max_retries
            if job.max_retries is None
            else min(job.max_retries, self.max_retries_limit)
        )
        base = self.backoff_s if job.retry_backoff_s is None else job.retry_backoff_s
        return RetryPolicy(retries, min(base, self.backoff_max_s), self.backoff_max_s)


def retry_reason(exc: BaseException) -> str | None:
    """Why `exc` may be retried (the metric's `reason` label), or None when it must not be.

    `exc` is what opening a backend request raised: a CorralError, made by
    `corral_common.ollama` from the aiohttp error it carries as its cause, or from the
    backend's status."""
    if not isinstance(exc, CorralError):
        return None
    cause = exc.__cause__
    if cause is None:
        # The backend answered: its status says whether it took the request.
        if exc.error_type is ErrorType.BACKEND_ERROR and exc.status in RETRYABLE_STATUSES:
            return f"http_{exc.status}"
        return None
    if isinstance(cause, aiohttp.ClientConnectorError):
        # Connecting failed (refused, unreachable, no such host): nothing was sent.
        return "refused"
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        # Timed out connecting (aiohttp's sock_connect): nothing was sent. A read timeout is
        # another TimeoutError and is not retried.
        return "connect_timeout"
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        # Reset or closed before any response: the backend went away with the request.
        return "reset"
    return None
