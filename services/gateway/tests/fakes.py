"""The gateway's collaborators faked for in-process tests: the hub where the scheduler's events
arrive, the submitter that publishes jobs, the session store's RPC and a gateway holding them;
the jobs, chunks and caller the tests build; and an app that relays one chat. A test feeds a
request's events with `hub.feed`, reads what was submitted and cancelled from `submitter`, and
answers the store's methods through `rpc.answers`.

Imported as `services.gateway.tests.fakes` (pytest's importlib mode names test modules by their
path from the root, as `tests.polling` is imported by the cross-service tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from aiohttp import web

from corral_common.contracts import Method
from corral_common.errors import CorralError
from corral_common.messages import (
    BackendStatus,
    Done,
    Event,
    Job,
    JobKind,
    LaneEntry,
    QueueStatus,
    SchedulerStatus,
    Started,
    Tokens,
)
from corral_common.status_board import StatusBoard
from corral_gateway.caller_queues import CallerQueues
from corral_gateway.encoders import NdjsonEncoder, StreamEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.hub import Delivery
from corral_gateway.identity.principal import Caller
from corral_gateway.ollama.chunks import OllamaChunks
from corral_gateway.places import Places
from corral_gateway.relay import ChunkShape, Extras, Relay, RelayTimings
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import Gateway
from corral_gateway.surfaces import OLLAMA, Route
from corral_gateway.ticket import JobTicket
from corral_gateway.turns_in_flight import TurnsInFlight
from corral_gateway.usage import Usage


class FakeHub:
    """A request's events, queued in order as if the scheduler had sent them. A request is
    registered at most once at a time, as the real hub allows."""

    def __init__(self) -> None:
        self.status = StatusBoard(10.0)
        self.places = Places(self.status)
        self.queues: dict[str, asyncio.Queue[Delivery]] = {}
        self.waiting: set[str] = set()

    def feed(self, request_id: str, *events: Delivery) -> asyncio.Queue[Delivery]:
        """Events the request will read, in order, as if the scheduler had sent them."""
        queue = self.queues.setdefault(request_id, asyncio.Queue())
        for event in events:
            queue.put_nowait(event)
        return queue

    def register(self, request_id: str) -> asyncio.Queue[Delivery]:
        if request_id in self.waiting:
            raise KeyError(request_id)
        self.waiting.add(request_id)
        return self.feed(request_id)

    def unregister(self, request_id: str) -> None:
        self.waiting.discard(request_id)
        self.places.forget(request_id)


class FakeSubmitter:
    def __init__(self) -> None:
        self.submitted: list[Job] = []
        self.cancels: list[str] = []
        # Raised by submit (a broker refusal), if set.
        self.refusal: CorralError | None = None
        # Set to hold submit until released (a publish waiting for its confirm).
        self.hold: asyncio.Event | None = None
        self.submitting = asyncio.Event()
        self.accepted = asyncio.Event()

    async def submit(self, job: Job, retry_after_s: int) -> None:
        self.submitting.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.refusal is not None:
            raise self.refusal
        self.submitted.append(job)
        self.accepted.set()

    async def cancel(self, request_id: str, reason: str) -> None:
        self.cancels.append(request_id)


Answer = Callable[[Any], Awaitable[dict[str, Any]]]


class FakeRpc:
    """The session store's answers, by method name; every call is recorded."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: Method[Any, Any], params: Any) -> Any:
        self.calls.append((method.name, params))
        return method.result.model_validate(await self.answers[method.name](params))


class FakeGateway:
    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self.hub = FakeHub()
        self.submitter = FakeSubmitter()
        self.rpc = FakeRpc()
        self.relays: dict[str, Any] = {}
        self.background: list[asyncio.Task[None]] = []
        self.usage = Usage()
        self.turns = TurnsInFlight()
        self.callers = CallerQueues()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.background.append(asyncio.ensure_future(coro))

    async def settle(self) -> None:
        """Wait for whatever was spawned (the cancels, the charges)."""
        await asyncio.gather(*self.background)

    def as_gateway(self) -> Gateway:
        return cast(Gateway, self)


def job(request_id: str, kind: JobKind = "chat", **fields: Any) -> Job:
    """A job of model "m", as a route would build it; `fields` set or override the rest."""
    built: dict[str, Any] = {
        "request_id": request_id,
        "gateway_id": "gw",
        "kind": kind,
        "model": "m",
        "payload": {"model": "m"},
        "enqueued_at": 0.0,
    }
    return Job(**{**built, **fields})


def answered(request_id: str, text: str, *, model: str, session_id: str) -> list[Event]:
    """A session chat's events, as the scheduler sends them: started, one token batch of
    `text`, done."""
    chunks = [{"model": model, "message": {"role": "assistant", "content": text}, "done": False}]
    final = {"model": model, "done": True, "done_reason": "stop", "eval_count": 1}
    return [
        Started(request_id=request_id, waited_ms=0),
        Tokens(request_id=request_id, seq=0, chunks=chunks),
        Done(
            request_id=request_id,
            token_batches=1,
            final=final,
            text=text,
            waited_ms=0,
            model=model,
            session_id=session_id,
        ),
    ]


def scheduler_status(
    lane: list[LaneEntry] | None = None, scheduler_id: str = "s1", **queue: Any
) -> SchedulerStatus:
    """A scheduler's status sent now: `lane` listed, `queue` fields over an idle queue's."""
    fields = {"waiting": 0, "running": 0, "average_wait_ms": 0, "processing_rate": 0.0, **queue}
    return SchedulerStatus(
        scheduler_id=scheduler_id,
        sent_at=time.time(),
        backend=BackendStatus(url="http://backend", connected=True),
        queue=QueueStatus(**fields),
        lane=lane or [],
    )


def chunk(text: str) -> dict[str, Any]:
    """One of Ollama's chat chunks from model "m"."""
    return {"model": "m", "message": {"role": "assistant", "content": text}, "done": False}


def alice(**fields: Any) -> Caller:
    """The caller of a user key of principal `alice`; `fields` add its key's terms."""
    return Caller(scope="user", address="10.0.0.7", key_id="key_a1", principal="alice", **fields)


def no_extras(done: Done, first_position: int) -> dict[str, Any]:
    return {}


def relay_app(
    gw: FakeGateway,
    ext: Extensions,
    submitted: Job,
    *,
    timings: RelayTimings,
    stream: bool = True,
    shape: ChunkShape | None = None,
    encoder: StreamEncoder | None = None,
    extras: Extras = no_extras,
) -> web.Application:
    """An app whose `POST /api/chat` does what a route does with request `ext.request_id`: open
    its ticket (answering GET /queue from the relay), submit `submitted`, and relay the events
    `gw.hub` was fed, as Ollama's chunks over NDJSON unless `shape` and `encoder` say otherwise."""

    async def handler(request: web.Request) -> web.StreamResponse:
        async with JobTicket(gw.as_gateway(), ext.request_id) as ticket:
            relay = Relay(
                request,
                ticket=ticket,
                kind="chat",
                stream=stream,
                ext=ext,
                shape=shape or OllamaChunks("chat", "m"),
                encoder=encoder or NdjsonEncoder(),
                extras=extras,
                timings=timings,
            )
            ticket.show(relay)
            await ticket.submit(submitted)
            return await relay.run()

    app = web.Application()
    OLLAMA.add(app.router, Route("POST", "/chat", handler))
    return app
