"""Admission's per-caller cap, in process: jobs delivered by a fake message, events published
to a fake broker. The scheduler's `max_queued_per_key` is the default; a job's own
`max_queued` (its key's limit) overrides it, 0 meaning no cap."""

from __future__ import annotations

import pytest

from corral_common.messages import Job
from corral_scheduler.admission import Admission
from services.scheduler.tests import fakes
from services.scheduler.tests.fakes import FakeBroker, make_executor


class Message:
    """A job's delivery as admission sees it."""

    def __init__(self, job: Job) -> None:
        self.body = job.model_dump_json().encode()
        self.redelivered = False
        self.settled: str | None = None

    async def ack(self) -> None:
        self.settled = "ack"

    async def reject(self, requeue: bool = False) -> None:
        self.settled = "requeue" if requeue else "dead-letter"


def admission(broker: FakeBroker, max_queued_per_key: int) -> Admission:
    executor = make_executor(broker, object())
    return Admission("sched-1", executor.lane, executor.sink, executor.speeds, max_queued_per_key)


def job(request_id: str, client_key: str, max_queued: int | None) -> Job:
    return fakes.job(request_id, client_key=client_key, max_queued=max_queued)


async def admit(lane: Admission, jobs: list[Job]) -> None:
    for one in jobs:
        await lane.on_job(Message(one))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("default", "own", "admitted"),
    [
        (2, None, 2),  # the scheduler's default
        (2, 3, 3),  # the key's own cap, above the default
        (5, 1, 1),  # ... and below it
        (2, 0, 4),  # 0: no cap at all
        (0, 2, 2),  # a cap of its own while the scheduler has none
    ],
)
async def test_a_callers_own_cap_overrides_the_default(
    default: int, own: int | None, admitted: int
) -> None:
    broker = FakeBroker()
    lane = admission(broker, default)
    await admit(lane, [job(f"r{i}", "alice", own) for i in range(4)])
    assert len(lane.lane) == admitted
    refused = [broker.refusal(f"r{i}") for i in range(4)]
    assert refused[:admitted] == [None] * admitted
    for event in refused[admitted:]:
        assert event is not None
        assert event["status"] == 429
        assert event["error_type"] == "rate_limit_exceeded"
        assert f"the limit is {own if own is not None else default}" in event["message"]
        assert event["details"]["retry_after_s"] >= 1


async def test_the_cap_counts_each_caller_apart() -> None:
    broker = FakeBroker()
    lane = admission(broker, 0)
    await admit(lane, [job("a1", "alice", 1), job("b1", "bob", 1), job("a2", "alice", 1)])
    assert [e.request_id for e in lane.lane] == ["a1", "b1"]
    assert broker.refusal("a2") is not None
