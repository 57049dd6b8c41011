"""A server's hand-over from one job to the next: the next job's request goes out as soon as the
previous job's backend response is closed, in the same step of the event loop and before that
job's `done` is published (its settling follows on the loop's next round), and never while a
response is still open; a job settled while the executor stops is still published and acked.
A job runs in its server's loop: its cancel ends the job, not the loop, and a stop that comes
with a job's cancel still stops the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from corral_common.messages import Job
from corral_scheduler.backends.base import Metrics
from corral_scheduler.executor import Executor
from services.scheduler.tests.fakes import (
    Delivery,
    FakeBroker,
    Settled,
    entry,
    job,
    make_executor,
    running,
    settle,
)


class Journal:
    """What happened, in order, across the backend and the broker."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, ...]] = []

    def index(self, *line: str) -> int:
        return self.lines.index(line)


class JournalBroker(FakeBroker):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        await super().publish_event(routing_key, body, durable=durable)
        request_id, message = self.events[-1]
        self.journal.lines.append(("publish", request_id, message["kind"]))


class JournalBackend:
    """Streams a two-token answer per request, naming the requests in the order they come
    (`names`), and fails the test if a request arrives while another response is open."""

    kind = "ollama"
    base_url = "http://backend"

    def __init__(self, journal: Journal, names: list[str]) -> None:
        self.journal = journal
        self.names = iter(names)
        self.open: str | None = None
        self.overlaps = 0
        self.on_close: Callable[[], None] = lambda: None
        # Requests that wait, once open, until the test sets their gate.
        self.gates: dict[str, asyncio.Event] = {}
        self.opened: dict[str, asyncio.Event] = {}

    @asynccontextmanager
    async def stream(
        self, kind: str, payload: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        name = next(self.names)
        if self.open is not None:
            self.overlaps += 1
        self.open = name
        self.journal.lines.append(("open", name))
        self.opened.setdefault(name, asyncio.Event()).set()

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            if name in self.gates:
                await self.gates[name].wait()
            yield {"message": {"role": "assistant", "content": "Echo:"}, "done": False}
            yield {"message": {"role": "assistant", "content": f" {name}"}, "done": False}
            yield {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 2}

        try:
            yield chunks()
        finally:
            self.open = None
            self.journal.lines.append(("close", name))
            # Runs on the loop's next round: whatever the journal has before it happened in
            # the same step as this close.
            asyncio.get_running_loop().call_soon(self.journal.lines.append, ("next round", name))
            self.on_close()

    async def version(self) -> str:
        return "0"


def push(executor: Executor, settled: Settled, rid: str) -> Job:
    queued = job(rid)
    executor.lane.push(entry(queued, Delivery(settled, rid), executor.lane.connection_epoch))
    return queued


async def test_the_next_request_goes_out_before_the_finished_jobs_done() -> None:
    journal = Journal()
    names = ["a", "b", "c"]
    broker = JournalBroker(journal)
    backend = JournalBackend(journal, names)
    executor = make_executor(broker, backend)
    settled: Settled = asyncio.Queue()
    for name in names:
        push(executor, settled, name)
    async with running(executor):
        assert await settle(settled, 3) == dict.fromkeys(names, "ack")
    assert backend.overlaps == 0
    for earlier, later in (("a", "b"), ("b", "c")):
        # Strictly serial: the earlier response closed before the next request.
        assert journal.index("close", earlier) < journal.index("open", later)
        # And the next request did not wait for the earlier job's `done`, nor for a round of
        # the event loop: it went out in the step that closed the earlier response.
        assert journal.index("open", later) < journal.index("publish", earlier, "done")
        assert journal.index("open", later) < journal.index("next round", earlier)
    for name in names:
        # Each job's own events still in order, its answer whole.
        assert broker.kinds(name)[0] == "started"
        assert broker.kinds(name)[-1] == "done"
        final = broker.final(name)
        assert final["text"] == f"Echo: {name}"
        assert final["token_batches"] == sum(1 for k in broker.kinds(name) if k == "token")


async def test_a_job_settles_after_its_release_even_when_the_executor_stops_then() -> None:
    """The executor is stopped the moment the job's backend response closes, before its
    settling has begun: stopping still publishes its `done` and acks it (not redelivered to
    run again)."""
    journal = Journal()
    broker = JournalBroker(journal)
    backend = JournalBackend(journal, ["only"])
    executor = make_executor(broker, backend)
    settled: Settled = asyncio.Queue()
    push(executor, settled, "only")
    task = asyncio.create_task(executor.run_forever())

    def stop() -> None:
        task.cancel()

    backend.on_close = stop
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert settled.get_nowait() == ("only", "ack")
    assert broker.kinds("only")[-1] == "done"
    assert broker.final("only")["text"] == "Echo: only"


async def test_the_speeds_and_metrics_are_learned_by_the_time_done_is_out() -> None:
    """The bookkeeping moved off the hand-over still happens before `done` goes out."""
    journal = Journal()
    broker = JournalBroker(journal)
    backend = JournalBackend(journal, ["first"])
    executor = make_executor(broker, backend)
    observed: list[str] = []
    learned_before_done: list[bool] = []
    observe = executor.speeds.observe

    def spy(
        model: str, final: Metrics | Mapping[str, object], prompt_chars: int | None = None
    ) -> None:
        observed.append(model)
        observe(model, final, prompt_chars)

    executor.speeds.observe = spy  # type: ignore[method-assign]
    publish = broker.publish_event

    async def checking(routing_key: str, body: bytes, *, durable: bool) -> None:
        if routing_key.endswith(".done"):
            learned_before_done.append(bool(observed))
        await publish(routing_key, body, durable=durable)

    broker.publish_event = checking  # type: ignore[method-assign]
    settled: Settled = asyncio.Queue()
    push(executor, settled, "first")
    async with running(executor):
        assert await settle(settled, 1) == {"first": "ack"}
    assert observed == ["llama3.2"]
    assert learned_before_done == [True]


def a_held_then_b() -> tuple[Executor, JournalBroker, JournalBackend, Journal, Settled]:
    """Jobs "a" and "b" queued; "a" holds its response open until its gate is set."""
    journal = Journal()
    broker = JournalBroker(journal)
    backend = JournalBackend(journal, ["a", "b"])
    backend.gates["a"] = asyncio.Event()
    executor = make_executor(broker, backend)
    settled: Settled = asyncio.Queue()
    push(executor, settled, "a")
    push(executor, settled, "b")
    return executor, broker, backend, journal, settled


async def test_a_running_jobs_cancel_ends_the_job_and_the_loop_goes_on() -> None:
    executor, broker, backend, _, settled = a_held_then_b()
    async with running(executor) as task:
        await backend.opened.setdefault("a", asyncio.Event()).wait()
        assert executor.lane.cancel_running("a", "client disconnected")
        assert await settle(settled, 2) == {"a": "ack", "b": "ack"}
        assert not task.done(), "the server's loop goes on after its job's cancel"
    assert broker.kinds("a")[-1] == "cancelled"
    assert broker.kinds("b")[-1] == "done"
    assert backend.overlaps == 0


async def test_a_stop_that_comes_with_a_jobs_cancel_still_stops_the_loop() -> None:
    executor, _, backend, journal, _ = a_held_then_b()
    task = asyncio.create_task(executor.run_forever())
    await backend.opened.setdefault("a", asyncio.Event()).wait()
    # Both in one step: the job's cancel and the executor's stop.
    executor.lane.cancel_running("a", "client disconnected")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert ("open", "b") not in journal.lines, "a stopped loop took no next job"
