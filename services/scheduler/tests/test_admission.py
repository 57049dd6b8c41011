"""Admission in process: jobs delivered by a fake message, events published to a fake broker.
The per-caller cap: the scheduler's `max_queued_per_key` is the default; a job's own
`max_queued` (its key's limit) overrides it, 0 meaning no cap. Delivery order: jobs enter
the lane in the order they were delivered, whatever their admission awaits."""

from __future__ import annotations

import asyncio

import pytest

from corral_common.messages import Job
from corral_scheduler.admission import Admission
from corral_scheduler.lane import Entry
from services.scheduler.tests import fakes
from services.scheduler.tests.fakes import FakeBroker, make_executor


class Message:
    """A job's delivery as admission sees it."""

    def __init__(self, job: Job, redelivered: bool = False) -> None:
        self.body = job.model_dump_json().encode()
        self.redelivered = redelivered
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


class HeldBroker(FakeBroker):
    """Holds the publish of a request's `accepted` (a redelivered job's is it still wanted?)
    until the test releases it; records each one published."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.release = asyncio.Event()
        self.accepted: dict[str, asyncio.Event] = {}

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        request_id = routing_key.split(".")[2]
        if routing_key.endswith(".accepted") and request_id == self.held:
            await self.release.wait()
        await super().publish_event(routing_key, body, durable=durable)
        self.accepted.setdefault(request_id, asyncio.Event()).set()

    async def accepted_out(self, request_id: str) -> None:
        await self.accepted.setdefault(request_id, asyncio.Event()).wait()


async def test_redelivered_jobs_enter_the_lane_in_delivery_order() -> None:
    """After a failover the lane is free at once and starts the first job pushed: a later
    delivery whose publish was confirmed sooner must not go in ahead of an earlier one (a
    failover test once saw the third request run before the second)."""
    broker = HeldBroker(held="second")
    lane = admission(broker, 0)
    pushed: list[str] = []
    push = lane.lane.push

    def recorded(entry: Entry) -> None:
        pushed.append(entry.request_id)
        push(entry)

    lane.lane.push = recorded  # type: ignore[method-assign]
    second = asyncio.create_task(lane.on_job(Message(job("second", "a", None), True)))  # type: ignore[arg-type]
    third = asyncio.create_task(lane.on_job(Message(job("third", "a", None), True)))  # type: ignore[arg-type]
    fresh = asyncio.create_task(lane.on_job(Message(job("fresh", "a", None))))  # type: ignore[arg-type]
    await broker.accepted_out("third")
    assert pushed == [], "nothing goes in while the first delivery is still being admitted"
    broker.release.set()
    await asyncio.gather(second, third, fresh)
    assert pushed == ["second", "third", "fresh"]
    assert [entry.request_id for entry in lane.lane] == ["second", "third", "fresh"]


async def test_a_job_turned_away_does_not_hold_up_the_ones_behind_it() -> None:
    broker = FakeBroker()
    lane = admission(broker, 1)
    await admit(lane, [job("a1", "alice", 1), job("a2", "alice", 1), job("a3", "bob", 1)])
    assert [entry.request_id for entry in lane.lane] == ["a1", "a3"]
    assert broker.refusal("a2") is not None
    assert len(lane.turns) == 0, "every delivery settled its turn"


async def test_a_request_id_another_gateways_job_holds_is_refused_not_swapped() -> None:
    """Each gateway refuses its own duplicate ids; two gateways' requests with one id meet
    only here, and the second must not take the first's place in the lane."""
    broker = FakeBroker()
    lane = admission(broker, 0)
    first = fakes.job("same-id", gateway_id="gw-a")
    second = fakes.job("same-id", gateway_id="gw-b")
    await admit(lane, [first])
    message = Message(second)
    await lane.on_job(message)  # type: ignore[arg-type]
    assert message.settled == "ack"
    assert [e.job.gateway_id for e in lane.lane] == ["gw-a"]
    refused = broker.refusal("same-id")
    assert refused is not None
    assert (refused["status"], refused["error_type"]) == (409, "request_in_flight")
    assert refused["message"] == "request id 'same-id' is already in flight; use a new X-Request-Id"
