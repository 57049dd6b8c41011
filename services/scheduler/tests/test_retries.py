"""The retry policy in isolation (retries.py): the backoff schedule with an injected random
source, how a request's own terms are bounded, and which backend failures may be retried."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Job
from corral_common.ollama import unreachable
from corral_devstack.ports import free_port
from corral_scheduler.backends.base import BackendStreamError
from corral_scheduler.retries import RetryLimits, RetryPolicy, retry_reason
from services.scheduler.tests import fakes

URL = "http://backend:11434"


def job(**terms: Any) -> Job:
    return fakes.job("r", **terms)


def test_the_ceilings_double_from_the_base_as_seed_002_shows() -> None:
    """`retry_backoff=2.0, max_retries=5`: "2s, 4s, 8s, 16s, 32s" are the longest waits."""
    policy = RetryPolicy(max_retries=5, base_s=2.0, cap_s=60.0)
    assert [policy.ceiling_s(n) for n in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_the_cap_bounds_every_wait() -> None:
    policy = RetryPolicy(max_retries=8, base_s=1.0, cap_s=10.0)
    assert [policy.ceiling_s(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    # Far retries neither overflow nor pass the cap.
    assert policy.ceiling_s(10_000) == 10.0


def test_full_jitter_draws_each_wait_between_zero_and_its_ceiling() -> None:
    policy = RetryPolicy(max_retries=4, base_s=0.5, cap_s=10.0)
    draws = iter([0.0, 0.5, 0.25, 0.999])
    delays = [policy.delay_s(n, lambda: next(draws)) for n in range(4)]
    assert delays == [0.0, 0.5, 0.5, 0.999 * 4.0]
    # The same draws, the same schedule: deterministic given its random source.
    again = iter([0.0, 0.5, 0.25, 0.999])
    assert [policy.delay_s(n, lambda: next(again)) for n in range(4)] == delays


def test_a_request_without_terms_gets_the_schedulers() -> None:
    limits = RetryLimits(max_retries=3, max_retries_limit=10, backoff_s=1.0, backoff_max_s=10.0)
    assert limits.for_job(job()) == RetryPolicy(3, 1.0, 10.0)


def test_a_requests_own_terms_are_bounded_by_the_limits() -> None:
    limits = RetryLimits(max_retries=3, max_retries_limit=5, backoff_s=1.0, backoff_max_s=10.0)
    assert limits.for_job(job(max_retries=2, retry_backoff_s=0.25)) == RetryPolicy(2, 0.25, 10.0)
    # Asking for more than the limit gets the limit; a base past the cap gets the cap.
    assert limits.for_job(job(max_retries=50, retry_backoff_s=99.0)) == RetryPolicy(5, 10.0, 10.0)
    # 0 turns retrying off for this request alone.
    assert limits.for_job(job(max_retries=0)).max_retries == 0


def test_a_job_refuses_negative_terms() -> None:
    with pytest.raises(ValidationError):
        job(max_retries=-1)
    with pytest.raises(ValidationError):
        job(retry_backoff_s=-0.5)


def caused(cause: BaseException) -> CorralError:
    """The error the backend client raises for `cause` (as `raise unreachable(...) from`)."""
    error = unreachable(URL, cause)
    error.__cause__ = cause
    return error


async def test_a_refused_connection_is_retried() -> None:
    """A real refusal: nothing listens on the port (a backend restarting)."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await session.get(f"http://127.0.0.1:{free_port()}/api/version")
    assert retry_reason(caused(refused.value)) == "refused"


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (aiohttp.ServerDisconnectedError(), "reset"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "reset"),
        (aiohttp.ConnectionTimeoutError("connect timed out"), "connect_timeout"),
        # A read timeout: the backend may still be working on it.
        (aiohttp.SocketTimeoutError("read timed out"), None),
        (TimeoutError(), None),
        (aiohttp.ClientPayloadError("cut"), None),
    ],
)
def test_what_failed_before_the_response_says_whether_to_retry(
    cause: BaseException, reason: str | None
) -> None:
    assert retry_reason(caused(cause)) == reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [(502, "http_502"), (503, "http_503"), (500, None), (504, None), (404, None), (400, None)],
)
def test_a_backend_status_is_retried_only_when_it_took_nothing(
    status: int, reason: str | None
) -> None:
    error_type = ErrorType.MODEL_NOT_FOUND if status == 404 else ErrorType.BACKEND_ERROR
    assert retry_reason(CorralError(error_type, "x", status=status)) == reason


def test_failures_after_the_response_began_are_never_retried() -> None:
    assert retry_reason(BackendStreamError("backend stream broke off")) is None
    assert retry_reason(KeyError("bug")) is None
    # Corral's own refusals (an unload with work queued) are not the backend's.
    assert retry_reason(CorralError(ErrorType.MODEL_BUSY, "busy")) is None
