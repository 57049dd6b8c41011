"""The per-caller queue cap at the edge: a gateway counts its callers' waiting jobs from their
publish until they start or end, and refuses one over the cap with a 429 and Retry-After before
anything is published or written; without a cap told by a scheduler or the caller's key, the
lane's own check is left to do it."""

from __future__ import annotations

from typing import Any

import pytest

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    Cancelled,
    Position,
    SchedulerStatus,
    Started,
)
from corral_gateway.caller_queues import CallerQueues, lane_cap
from corral_gateway.ticket import JobTicket
from services.gateway.tests import fakes
from services.gateway.tests.fakes import FakeGateway, job


def status(cap: int | None, rate: float = 0.0, scheduler_id: str = "s1") -> SchedulerStatus:
    return fakes.scheduler_status(
        scheduler_id=scheduler_id, processing_rate=rate, max_queued_per_key=cap
    )


def placed(rid: str, position: int = 1, wait_ms: int = 1000) -> Position:
    return Position(request_id=rid, position=position, estimated_wait_ms=wait_ms)


def test_a_job_counts_from_its_first_place_behind_others_until_it_runs_or_ends() -> None:
    callers = CallerQueues()
    for rid in ("a", "b", "c", "d"):
        callers.add(rid, "alice")
    callers.add("x", "bob")
    # Not placed yet (it may be running already): not counted.
    assert (callers.waiting("alice"), callers.waiting("bob")) == (0, 0)
    for rid in ("a", "b", "c", "d", "x"):
        callers.heard(placed(rid))
    callers.heard(placed("a", 2))  # a later place: still one job
    assert (callers.waiting("alice"), callers.waiting("bob")) == (4, 1)
    callers.heard(Started(request_id="a", waited_ms=1))
    callers.heard(placed("b", 0))
    callers.heard(Cancelled(request_id="c", stage="queued"))
    callers.remove("d")
    callers.remove("d")
    assert (callers.waiting("alice"), callers.waiting("bob")) == (0, 1)
    # Another gateway's job (never added) changes nothing.
    callers.heard(placed("zzz"))
    callers.heard(Started(request_id="x", waited_ms=1))
    assert (callers.waiting("alice"), callers.waiting("bob")) == (0, 0)


def test_retry_after_is_the_first_waiting_jobs_wait_plus_one_jobs_time() -> None:
    callers = CallerQueues()
    callers.add("a", "alice")
    callers.add("b", "alice")
    assert callers.retry_after_s("alice", [status(64, rate=0.5)]) is None
    callers.heard(placed("a", 1, 2500))
    callers.heard(placed("b", 2, 6000))
    # 2.5 s until its first job starts, then 2 s of it (0.5 jobs a second).
    assert callers.retry_after_s("alice", [status(64, rate=0.5)]) == 5
    assert callers.retry_after_s("bob", [status(64, rate=0.5)]) is None


def test_the_lanes_cap_is_the_largest_any_scheduler_tells() -> None:
    assert lane_cap([]) is None
    assert lane_cap([status(None)]) is None
    assert lane_cap([status(2), status(None, scheduler_id="s2"), status(5, scheduler_id="s3")]) == 5


def wait_in_lane(gw: FakeGateway, rid: str) -> None:
    """Alice's job `rid` waits in the lane, placed behind others."""
    gw.callers.add(rid, "alice")
    gw.callers.heard(placed(rid))


async def submit(gw: FakeGateway, rid: str, **fields: Any) -> None:
    async with JobTicket(gw.as_gateway(), rid) as ticket:
        await ticket.submit(job(rid, **{"client_key": "alice", **fields}))


async def test_a_caller_at_the_lanes_cap_is_refused_before_anything_is_published() -> None:
    gw = FakeGateway()
    gw.hub.status.update(status(2))
    wait_in_lane(gw, "q1")
    await submit(gw, "q2")
    assert gw.callers.waiting("alice") == 1  # its ticket closed: no longer counted
    wait_in_lane(gw, "q2")
    with pytest.raises(CorralError) as refused:
        await submit(gw, "q3")
    error = refused.value
    assert (error.status, error.error_type) == (429, ErrorType.RATE_LIMIT_EXCEEDED)
    assert error.message.startswith("too many queued requests: this client already has 2 ")
    assert error.details["limit"] == 2 and int(error.headers["Retry-After"]) >= 1
    assert [j.request_id for j in gw.submitter.submitted] == ["q2"]
    assert gw.callers.waiting("alice") == 2
    # Another caller, and a job without a caller key, are not held.
    await submit(gw, "b1", client_key="bob")
    async with JobTicket(gw.as_gateway(), "anon") as ticket:
        await ticket.submit(job("anon"))
    assert [j.request_id for j in gw.submitter.submitted] == ["q2", "b1", "anon"]
    await gw.settle()


async def test_a_keys_own_cap_holds_without_any_status_and_none_is_left_to_the_lane() -> None:
    gw = FakeGateway()
    wait_in_lane(gw, "q1")
    # No scheduler has told its cap: the lane judges a key without its own.
    await submit(gw, "q2")
    with pytest.raises(CorralError):
        await submit(gw, "q3", max_queued=1)
    # A cap of 0 is none.
    gw.hub.status.update(status(0))
    await submit(gw, "q4")
    assert [j.request_id for j in gw.submitter.submitted] == ["q2", "q4"]
    await gw.settle()
