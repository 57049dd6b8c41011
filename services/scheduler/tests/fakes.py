"""The scheduler's surroundings faked for in-process tests: a broker that records the events
published for each request, deliveries that report how they were settled, a sleep that only
records what it was asked to wait, and the jobs, lane entries and executor the tests build.

Imported as `services.scheduler.tests.fakes` (pytest's importlib mode names test modules by
their path from the root, as `tests.polling` is imported by the cross-service tests)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson

from corral_common.messages import Job
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink
from corral_scheduler.executor import Executor
from corral_scheduler.lane import ONE_BACKEND, Entry, Lane

ARRIVALS = itertools.count()

Settled = asyncio.Queue[tuple[str, str]]
"""(request id, "ack" | "requeue" | "dead-letter"), in the order deliveries were settled."""


class Delivery:
    """An AMQP delivery as the executor sees it: acked or rejected once."""

    def __init__(self, settled: Settled, rid: str, redelivered: bool = False) -> None:
        self.settled = settled
        self.rid = rid
        self.redelivered = redelivered
        self.headers: dict[str, Any] = {}

    async def ack(self) -> None:
        self.settled.put_nowait((self.rid, "ack"))

    async def reject(self, requeue: bool = False) -> None:
        self.settled.put_nowait((self.rid, "requeue" if requeue else "dead-letter"))


class FakeBroker:
    """Records every event published, by request id; publishing for a request id in `broken`
    raises what aiormq raised for a routing key over 255 bytes (a ValueError, not a broker
    error)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.broken: set[str] = set()
        # Every message published, by routing key (a gateway's `Positions` included whole).
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
        _, _, request_id, _ = routing_key.split(".")
        if request_id in self.broken:
            raise ValueError("Routing key too long (max 255 bytes)")
        message = orjson.loads(body)
        self.published.append((routing_key, message))
        if message["kind"] == "positions":
            # As the gateway does: each entry is its request's position event.
            for position in message["positions"]:
                self.events.append((position["request_id"], position))
            return
        if message.get("started") is not None:
            # As the gateway does: a `started` riding on a token batch comes first.
            self.events.append((request_id, message["started"]))
        self.events.append((request_id, message))

    def of(self, request_id: str) -> list[dict[str, Any]]:
        return [event for rid, event in self.events if rid == request_id]

    def kinds(self, request_id: str) -> list[str]:
        return [event["kind"] for event in self.of(request_id)]

    def final(self, request_id: str) -> dict[str, Any]:
        return self.of(request_id)[-1]

    def refusal(self, request_id: str) -> dict[str, Any] | None:
        """The request's error event, if it had one."""
        return next((e for e in self.of(request_id) if e["kind"] == "error"), None)


async def settle(settled: Settled, count: int) -> dict[str, str]:
    """How the next `count` deliveries were settled, by request id."""
    return dict([await settled.get() for _ in range(count)])


def recording(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    """The executor's sleep: records each wait asked for, without waiting it out."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return sleep


def speed_book() -> SpeedBook:
    return SpeedBook(prompt_tokens_per_s=400, eval_tokens_per_s=15, load_ms=0, eval_count=10)


def make_executor(broker: FakeBroker, backend: object, **kwargs: Any) -> Executor:
    """An executor over an empty lane, publishing its events to `broker`."""
    sink = EventSink(broker)  # type: ignore[arg-type]
    backends = {ONE_BACKEND: backend}
    return Executor(Lane(), backends, sink, speed_book(), **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def running(executor: Executor) -> AsyncIterator[asyncio.Task[None]]:
    """The executor's loop running, stopped on the way out."""
    task = asyncio.create_task(executor.run_forever())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def job(request_id: str, **fields: Any) -> Job:
    """A chat job for llama3.2 enqueued now; `fields` set or override the rest."""
    built: dict[str, Any] = {
        "request_id": request_id,
        "gateway_id": "gw",
        "kind": "chat",
        "model": "llama3.2",
        "payload": {"model": "llama3.2"},
        "enqueued_at": time.time(),
    }
    return Job(**{**built, **fields})


def entry(job: Job, delivery: Delivery | None = None, connection_epoch: int = 0) -> Entry:
    """The job as admission puts it in the lane: admitted now, after every earlier entry."""
    return Entry(
        job=job,
        delivery=delivery,
        connection_epoch=connection_epoch,
        admitted_at=time.monotonic(),
        arrival=next(ARRIVALS),
    )
