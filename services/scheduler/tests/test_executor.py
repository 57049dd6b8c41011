"""The executor in process, fed from the lane with fake deliveries, a fake backend and a fake
broker: one job's failure costs that job only, the takeover grace is waited once per takeover,
and the watchdog's verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from corral_scheduler.backends.base import DoneAnswer
from corral_scheduler.executor import Executor
from corral_scheduler.lane import ONE_BACKEND
from corral_scheduler.watchdog import Watchdog
from services.scheduler.tests.fakes import (
    Delivery,
    FakeBroker,
    Settled,
    entry,
    job,
    make_executor,
    recording,
    settle,
)


class FakeBackend:
    """The part of `backends.base.Backend` the executor calls."""

    kind = "ollama"
    base_url = "http://backend"

    @asynccontextmanager
    async def stream(
        self, kind: str, payload: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield {"message": {"role": "assistant", "content": "hi"}, "done": False}
            yield {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 1}

        yield chunks()

    async def embed(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"embeddings": []}

    async def load(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"done": True}

    async def unload(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"done": True}


def push(
    executor: Executor,
    settled: Settled,
    rid: str,
    *,
    redelivered: bool = False,
    kind: str = "chat",
) -> None:
    delivery = Delivery(settled, rid, redelivered)
    executor.lane.push(entry(job(rid, kind=kind), delivery, executor.lane.connection_epoch))


@pytest.fixture
def fake_broker() -> FakeBroker:
    return FakeBroker()


async def run(executor: Executor) -> AsyncIterator[None]:
    task = asyncio.create_task(executor.run_forever())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not task.done() or task.cancelled(), "the executor's loop ended by itself"


running = asynccontextmanager(run)


@pytest.mark.parametrize("kind", ["chat", "load"])
async def test_a_job_whose_events_cannot_be_published_fails_alone(
    fake_broker: FakeBroker, kind: str
) -> None:
    """The issue's reproduction in process: every publish for one job raises. That job is
    dead-lettered (its gateway learns it from there); the jobs around it run."""
    executor = make_executor(fake_broker, FakeBackend())
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    fake_broker.broken.add("bad")
    for rid in ("before", "bad", "after"):
        push(executor, settled, rid, kind=kind)
    async with running(executor):
        outcomes = await settle(settled, 3)
        assert outcomes == {"before": "ack", "bad": "dead-letter", "after": "ack"}
        assert fake_broker.kinds("before")[-1] == "done"
        assert fake_broker.kinds("after")[-1] == "done"
        # And the lane still works afterwards.
        push(executor, settled, "later", kind=kind)
        assert await settle(settled, 1) == {"later": "ack"}


async def test_a_job_failing_after_its_client_can_be_told_gets_an_error_naming_it(
    fake_broker: FakeBroker,
) -> None:
    """A bug inside the job (here the backend call raises something unexpected): the client gets
    a 500 naming its request, the delivery is acked, the next job runs."""
    executor = make_executor(fake_broker, FakeBackend())

    async def broken_load(payload: dict[str, Any]) -> DoneAnswer:
        raise KeyError("surprise")

    executor.backends[ONE_BACKEND].load = broken_load  # type: ignore[method-assign]
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    push(executor, settled, "oops", kind="load")
    push(executor, settled, "fine")
    async with running(executor):
        assert await settle(settled, 2) == {"oops": "ack", "fine": "ack"}
    error = [e for rid, e in fake_broker.events if rid == "oops" and e["kind"] == "error"]
    assert error and error[0]["status"] == 500
    assert "'oops'" in error[0]["message"]
    assert fake_broker.kinds("fine")[-1] == "done"


async def test_the_takeover_grace_is_waited_once_per_takeover_not_per_job(
    fake_broker: FakeBroker,
) -> None:
    graces: list[float] = []
    executor = make_executor(
        fake_broker, FakeBackend(), takeover_grace_s=1.0, sleep=recording(graces)
    )
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for index in range(100):
        push(executor, settled, f"handed-over-{index}", redelivered=True)
    async with running(executor):
        outcomes = await settle(settled, 100)
        assert set(outcomes.values()) == {"ack"}
        assert graces == [1.0]
        # A later takeover (after a broker reconnect: another scheduler may have held the
        # lane meanwhile) waits once again.
        executor.lane.connection_epoch += 1
        for index in range(3):
            push(executor, settled, f"second-{index}", redelivered=True)
        await settle(settled, 3)
    assert graces == [1.0, 1.0]


async def test_fresh_jobs_never_wait_a_grace(fake_broker: FakeBroker) -> None:
    graces: list[float] = []
    executor = make_executor(
        fake_broker, FakeBackend(), takeover_grace_s=1.0, sleep=recording(graces)
    )
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for index in range(5):
        push(executor, settled, f"fresh-{index}")
    async with running(executor):
        await settle(settled, 5)
    assert graces == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def never(_: object) -> None:
    raise AssertionError("not stuck")


def test_watchdog_an_idle_lane_is_never_stuck(fake_broker: FakeBroker) -> None:
    executor = make_executor(fake_broker, FakeBackend())
    clock = Clock()
    dog = Watchdog(executor.lane, stall_s=10, on_stuck=never, clock=clock)
    executor.lane.progress_at = clock.now
    clock.now += 3600  # an idle hour
    assert dog.assess().stuck is False
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    push(executor, settled, "new")  # work arrives after the idle hour: the clock starts now
    assert dog.assess().stuck is False
    clock.now += 5
    verdict = dog.assess()
    assert (verdict.stuck, verdict.stalled_for_s) == (False, 5.0)


def test_watchdog_waiting_work_without_progress_is_stuck(fake_broker: FakeBroker) -> None:
    executor = make_executor(fake_broker, FakeBackend())
    clock = Clock()
    dog = Watchdog(executor.lane, stall_s=10, on_stuck=never, clock=clock)
    executor.lane.progress_at = clock.now
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    push(executor, settled, "waiting")
    dog.assess()
    clock.now += 11
    verdict = dog.assess()
    assert verdict.stuck and verdict.stalled_for_s == 11.0
    assert dog.reason() is not None and "stuck" in dog.reason()  # type: ignore[operator]


def test_watchdog_a_paused_lane_with_nothing_running_is_idle(fake_broker: FakeBroker) -> None:
    executor = make_executor(fake_broker, FakeBackend())
    clock = Clock()
    dog = Watchdog(executor.lane, stall_s=10, on_stuck=never, clock=clock)
    executor.lane.progress_at = clock.now
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    push(executor, settled, "held")
    executor.lane.pause()
    dog.assess()
    clock.now += 100
    assert dog.assess().stuck is False


def test_watchdog_progress_resets_the_stall(fake_broker: FakeBroker) -> None:
    """Tokens streaming from a long generation count: it is not stuck."""
    executor = make_executor(fake_broker, FakeBackend())
    clock = Clock()
    dog = Watchdog(executor.lane, stall_s=10, on_stuck=never, clock=clock)
    executor.lane.progress_at = clock.now
    settled: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    push(executor, settled, "long")
    dog.assess()
    for _ in range(10):
        clock.now += 8
        executor.lane.progress_at = clock.now - 1  # a chunk a second ago
        assert dog.assess().stuck is False
