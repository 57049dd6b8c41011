"""The job lifecycle in process: the `JobTicket` (listen, submit, outcome, cancel when the
client leaves) and the `Relay` state machine, fed from queues of fake scheduler events (no
broker, no scheduler), with Ollama's chunks over NDJSON and a test shape over SSE."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    Accepted,
    Cancelled,
    Done,
    Failed,
    LaneEntry,
    Position,
    SchedulerStatus,
    Started,
    Tokens,
)
from corral_gateway.encoders import Comment, Data, Frame, NdjsonEncoder, SseEncoder, StreamEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.relay import ChunkShape, RelayTimings
from corral_gateway.ticket import JobTicket, run_job
from services.gateway.tests import fakes
from services.gateway.tests.fakes import FakeGateway, chunk, job

RID = "req-1"


def done(batches: int, text: str = "", request_id: str = RID) -> Done:
    final = {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}
    final |= {"done_reason": "stop", "prompt_eval_count": 7}
    return Done(
        request_id=request_id, token_batches=batches, final=final, text=text, waited_ms=5, model="m"
    )


def failed(status: int = 404, message: str = "model 'm' not found") -> Failed:
    return Failed(request_id=RID, status=status, error_type="model_not_found", message=message)


def position(place: int, wait_ms: int) -> Position:
    return Position(request_id=RID, position=place, estimated_wait_ms=wait_ms)


def started(waited_ms: int = 0, *, redelivered: bool = False) -> Started:
    return Started(request_id=RID, waited_ms=waited_ms, redelivered=redelivered)


def tokens(seq: int, *texts: str) -> Tokens:
    """One token batch of the request, a native chunk for each text."""
    return Tokens(request_id=RID, seq=seq, chunks=[chunk(text) for text in texts])


# --- the ticket ----------------------------------------------------------------------------


async def test_a_whole_answer_is_returned_and_nothing_is_cancelled() -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, position(1, 10), done(0))
    answer = await run_job(gw.as_gateway(), job(RID))
    assert answer.final["done_reason"] == "stop"
    assert [j.request_id for j in gw.submitter.submitted] == [RID]
    await gw.settle()
    assert gw.submitter.cancels == []
    assert RID not in gw.hub.waiting


@pytest.mark.parametrize(
    ("event", "status", "error_type"),
    [
        (failed(), 404, ErrorType.MODEL_NOT_FOUND),
        (Cancelled(request_id=RID, stage="queued"), 499, ErrorType.INTERRUPTED),
        (BrokerLost(), 503, ErrorType.BROKER_UNAVAILABLE),
    ],
)
async def test_a_failed_job_raises_its_error_and_is_not_cancelled(
    event: Delivery, status: int, error_type: ErrorType
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, event)
    with pytest.raises(CorralError) as caught:
        await run_job(gw.as_gateway(), job(RID))
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    if isinstance(event, BrokerLost):
        assert caught.value.headers == {"Retry-After": "5"}
    await gw.settle()
    assert gw.submitter.cancels == []


async def test_a_refused_publish_cancels_nothing() -> None:
    gw = FakeGateway()
    gw.submitter.refusal = CorralError(ErrorType.QUEUE_FULL, "busy")
    with pytest.raises(CorralError):
        await run_job(gw.as_gateway(), job(RID))
    await gw.settle()
    assert gw.submitter.cancels == []
    assert RID not in gw.hub.waiting


async def test_a_client_leaving_while_queued_cancels_the_job_once() -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, position(3, 10))
    waiting = asyncio.ensure_future(run_job(gw.as_gateway(), job(RID)))
    # The job is in the lane once it was submitted; the client leaves while it waits.
    await gw.submitter.accepted.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await gw.settle()
    assert gw.submitter.cancels == [RID]
    assert RID not in gw.hub.waiting


async def test_a_whole_answer_job_not_started_by_its_deadline_is_a_408_then_and_there() -> None:
    # An embedding behind a long generation: the lane checks its deadline only when its turn
    # comes, so the ticket answers at the deadline itself, and the job is taken out of line.
    gw = FakeGateway()
    gw.hub.feed(RID, position(1, 60_000))
    now = time.time()
    waited = time.monotonic()
    with pytest.raises(CorralError) as raised:
        await run_job(gw.as_gateway(), job(RID, "embed", enqueued_at=now, deadline=now + 0.2))
    assert time.monotonic() - waited < 2.0
    assert (raised.value.status, raised.value.error_type) == (408, ErrorType.QUEUE_TIMEOUT)
    assert raised.value.message.startswith("request timed out in the queue after 0.")
    await gw.settle()
    assert gw.submitter.cancels == [RID]


async def test_a_whole_answer_job_running_at_its_deadline_is_waited_for() -> None:
    gw = FakeGateway()
    running = LaneEntry(
        request_id=RID,
        kind="embed",
        model="m",
        position=0,
        estimated_wait_ms=0,
        waited_ms=10,
    )
    gw.hub.status.update(fakes.scheduler_status([running], running=1))
    # The ticket reads the statuses once its deadline has passed, to see whether the job runs.
    checked = asyncio.Event()
    fresh = gw.hub.status.fresh

    def watched() -> list[SchedulerStatus]:
        if gw.submitter.submitted:
            checked.set()
        return fresh()

    gw.hub.status.fresh = watched  # type: ignore[method-assign]
    now = time.time()
    answering = asyncio.ensure_future(
        run_job(gw.as_gateway(), job(RID, "embed", enqueued_at=now, deadline=now + 0.05))
    )
    await checked.wait()
    gw.hub.feed(RID, done(0))
    answer = await answering
    assert answer.final["done_reason"] == "stop"
    await gw.settle()
    assert gw.submitter.cancels == []


async def test_a_client_leaving_before_the_publish_is_confirmed_still_cancels() -> None:
    # The race both old copies had to fix: the scheduler may run the job before the confirm.
    gw = FakeGateway()
    gw.submitter.hold = asyncio.Event()
    waiting = asyncio.ensure_future(run_job(gw.as_gateway(), job(RID)))
    await gw.submitter.submitting.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await gw.settle()
    assert gw.submitter.cancels == [RID]


def window_full(gw: FakeGateway) -> None:
    """This gateway's job holds the backend and the next has not been admitted for a while:
    the scheduler's window is full."""
    places = gw.hub.places
    places.place("running", lambda _: None)
    places.place("stuck", lambda _: None)
    for slot in places._pending.values():
        slot.placed_at -= 10


async def test_a_job_behind_another_is_told_its_place_before_the_publish_is_confirmed() -> None:
    gw = FakeGateway()
    gw.submitter.hold = asyncio.Event()
    window_full(gw)
    async with JobTicket(gw.as_gateway(), RID) as ticket:
        # Returns with the confirm still outstanding: the client is told its place now.
        await ticket.submit(job(RID))
        assert ticket.events.get_nowait() == Position(
            request_id=RID, position=2, estimated_wait_ms=0
        )
        gw.submitter.hold.set()
        await gw.settle()
        assert [j.request_id for j in gw.submitter.submitted] == [RID]
        ticket.settle()
    assert len(gw.hub.places) == 2  # the two ahead only


async def test_a_refusal_after_the_place_was_told_is_the_requests_failure() -> None:
    gw = FakeGateway()
    gw.submitter.refusal = CorralError(ErrorType.QUEUE_FULL, "busy", headers={"Retry-After": "7"})
    window_full(gw)
    async with JobTicket(gw.as_gateway(), RID) as ticket:
        await ticket.submit(job(RID))
        await gw.settle()
        assert isinstance(ticket.events.get_nowait(), Position)
        failure = ticket.events.get_nowait()
        assert isinstance(failure, Failed)
        assert (failure.status, failure.error_type) == (503, "queue_full")
        assert failure.details["retry_after_s"] == 7
    await gw.settle()
    # Never in the lane: nothing to cancel, nothing kept.
    assert gw.submitter.cancels == []
    assert len(gw.hub.places) == 2


async def test_a_request_id_in_flight_is_a_conflict() -> None:
    gw = FakeGateway()
    async with JobTicket(gw.as_gateway(), RID):
        with pytest.raises(CorralError) as caught:
            JobTicket(gw.as_gateway(), RID).open()
    # A 409 that says what to do, not a 400 that reads like a malformed request.
    assert caught.value.error_type is ErrorType.REQUEST_IN_FLIGHT
    assert caught.value.status == 409
    assert caught.value.message == (
        f"request id '{RID}' is already in flight; use a new X-Request-Id"
    )
    # Free again once the first has left.
    async with JobTicket(gw.as_gateway(), RID):
        pass


async def test_a_listen_only_ticket_cancels_nothing() -> None:
    gw = FakeGateway()
    async with JobTicket(gw.as_gateway(), RID) as ticket:
        assert not ticket.in_lane
    await gw.settle()
    assert gw.submitter.cancels == []


# --- the relay, over HTTP in process --------------------------------------------------------

TIMINGS = RelayTimings(heartbeat_s=60.0, straggler_timeout_s=60.0, stored_timeout_s=0.0)


class SseShape:
    """A minimal SSE shape as a `/v1` surface would choose one: queue feedback as comments."""

    def queue(self, position: int, wait_ms: int) -> Frame:
        return Comment(f"queue position={position} estimated_wait_ms={wait_ms}")

    def chunk(self, chunk: dict[str, Any]) -> list[Frame]:
        return [Data({"delta": chunk["message"]["content"]})]

    def final(self, done: Done, extras: dict[str, Any]) -> list[Frame]:
        return [Data({"finish_reason": done.final["done_reason"]})]

    def failure(self, error: CorralError) -> list[Frame]:
        return [Data({"error": {"message": error.message}})]

    def passthrough(self, tokens: Tokens, encoder: StreamEncoder) -> bytes | None:
        return None

    def whole(self, chunks: list[dict[str, Any]], done: Done, extras: dict[str, Any]) -> Any:
        return {"content": done.text}


def relay_app(
    gw: FakeGateway,
    *,
    stream: bool = True,
    progress: bool = True,
    queue_timeout_s: float | None = None,
    timings: RelayTimings = TIMINGS,
    shape: ChunkShape | None = None,
    encoder: StreamEncoder | None = None,
) -> web.Application:
    ext = Extensions(
        request_id=RID,
        session_id=None,
        queue_progress=progress,
        client_key=None,
        queue_timeout_s=queue_timeout_s,
    )
    return fakes.relay_app(
        gw,
        ext,
        job(RID),
        timings=timings,
        stream=stream,
        shape=shape,
        encoder=encoder,
        extras=lambda done, first_position: {
            "request_id": RID,
            "queue_info": {"position": first_position},
        },
    )


def lines(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines()]


async def test_queue_chunks_then_tokens_in_order_then_the_final_chunk(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(
        RID,
        position(2, 3000),
        # Within a second of the estimate shown: not shown again.
        position(2, 3400),
        started(5),
        tokens(1, "b"),
        tokens(0, "a"),
        tokens(0, "a"),  # a duplicate batch
        done(2, "ab"),
    )
    client = await aiohttp_client(relay_app(gw))
    response = await client.post("/chat")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["X-Queue-Position"] == "2"
    assert response.headers["X-Estimated-Wait-Ms"] == "3000"
    got = lines(await response.read())
    assert [c.get("queue_info") for c in got[:2]] == [
        {"position": 2, "estimated_wait_ms": 3000},
        {"position": 0, "estimated_wait_ms": 0},
    ]
    assert [c["message"]["content"] for c in got[2:4]] == ["a", "b"]
    assert got[4]["done"] is True and got[4]["request_id"] == RID
    assert got[4]["queue_info"] == {"position": 2}
    assert len(got) == 5
    await gw.settle()
    assert gw.submitter.cancels == []


async def test_a_final_event_overtaking_its_tokens_waits_for_them(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, started(), done(2, "ab"), tokens(1, "b"), tokens(0, "a"))
    client = await aiohttp_client(relay_app(gw, progress=False))
    got = lines(await (await client.post("/chat")).read())
    assert [c["message"]["content"] for c in got] == ["a", "b", ""]
    assert got[-1]["done"] is True


async def test_a_non_streaming_answer_is_one_object(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, position(1, 100), started(), tokens(0, "a", "b"), done(1, "ab"))
    client = await aiohttp_client(relay_app(gw, stream=False))
    response = await client.post("/chat")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = await response.json()
    assert body["message"] == {"role": "assistant", "content": "ab"}
    assert body["done"] is True and body["request_id"] == RID


@pytest.mark.parametrize(
    ("event", "status", "text", "retry_after"),
    [
        (failed(), 404, "model 'm' not found", None),
        (Cancelled(request_id=RID, stage="queued"), 499, "request canceled", None),
        (BrokerLost(), 503, "lost the connection to Corral's message broker; please retry", "5"),
    ],
)
async def test_a_failure_before_the_first_byte_keeps_its_status(
    aiohttp_client: AiohttpClient,
    event: Delivery,
    status: int,
    text: str,
    retry_after: str | None,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, event)
    client = await aiohttp_client(relay_app(gw))
    response = await client.post("/chat")
    assert response.status == status
    # Ollama's shape, whatever the error's type (the surface renders it).
    assert await response.json() == {"error": text}
    assert response.headers["X-Request-Id"] == RID
    assert response.headers.get("Retry-After") == retry_after
    await gw.settle()
    assert gw.submitter.cancels == []


async def test_a_failure_after_the_first_byte_ends_the_stream_with_an_error_line(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, started(), tokens(0, "a"), failed(500, "backend broke"))
    client = await aiohttp_client(relay_app(gw, progress=False))
    response = await client.post("/chat")
    assert response.status == 200
    got = lines(await response.read())
    assert got[0]["message"]["content"] == "a"
    assert got[-1] == {"error": "backend broke"}


async def test_a_mid_stream_failure_overtaking_its_tokens_waits_for_them(
    aiohttp_client: AiohttpClient,
) -> None:
    """The failure comes on the confirmed channel and may arrive before the tokens streamed
    before it: they go out first, then the error line (not an HTTP 500 with nothing)."""
    gw = FakeGateway()
    broke = failed(500, "out of memory").model_copy(update={"token_batches": 2})
    gw.hub.feed(RID, started(), broke, tokens(1, "b"), tokens(0, "a"))
    client = await aiohttp_client(relay_app(gw, progress=False))
    response = await client.post("/chat")
    assert response.status == 200
    got = lines(await response.read())
    assert [c["message"]["content"] for c in got[:2]] == ["a", "b"]
    assert got[-1] == {"error": "out of memory"}


async def test_a_redelivered_job_after_tokens_is_not_spliced(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, started(), tokens(0, "a"), started(redelivered=True))
    client = await aiohttp_client(relay_app(gw, progress=False))
    got = lines(await (await client.post("/chat")).read())
    assert got[-1] == {"error": "generation was interrupted by a scheduler restart; please retry"}


async def test_a_redelivered_job_not_streamed_starts_over(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    gw.hub.feed(
        RID,
        started(),
        tokens(0, "half"),
        started(redelivered=True),
        tokens(0, "whole"),
        done(1, "whole"),
    )
    client = await aiohttp_client(relay_app(gw, stream=False))
    body = await (await client.post("/chat")).json()
    assert body["message"]["content"] == "whole"


async def test_tokens_lost_in_transit_end_the_stream_with_an_error(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(
        RID,
        started(),
        tokens(0, "a"),
        done(2, "ab"),  # batch 1 never comes
    )
    timings = RelayTimings(heartbeat_s=60.0, straggler_timeout_s=0.01, stored_timeout_s=0.0)
    client = await aiohttp_client(relay_app(gw, progress=False, timings=timings))
    got = lines(await (await client.post("/chat")).read())
    assert got[-1] == {"error": "lost part of the answer in transit; please retry"}


async def test_the_queue_timeout_answers_408_and_cancels_the_job_once(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID)  # the scheduler says nothing: the request waits past its deadline
    client = await aiohttp_client(relay_app(gw, progress=False, queue_timeout_s=0.001))
    response = await client.post("/chat")
    assert response.status == 408
    assert (await response.json())["error"].startswith("request timed out in the queue after")
    await gw.settle()
    assert gw.submitter.cancels == [RID]
    assert gw.relays == {}


async def test_an_sse_shape_gets_comments_data_and_done(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, position(2, 3000), started(), tokens(0, "a"), done(1, "a"))
    client = await aiohttp_client(relay_app(gw, shape=SseShape(), encoder=SseEncoder()))
    response = await client.post("/chat")
    assert response.headers["Content-Type"] == "text/event-stream"
    assert await response.read() == (
        b": queue position=2 estimated_wait_ms=3000\n\n"
        b": queue position=0 estimated_wait_ms=0\n\n"
        b'data: {"delta":"a"}\n\n'
        b'data: {"finish_reason":"stop"}\n\n'
        b"data: [DONE]\n\n"
    )


# --- queue feedback only for a request that waits, and heartbeats ---------------------------

ANSWER = (
    b'{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n'
    b'{"model":"m","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","prompt_eval_count":7,"request_id":"req-1","queue_info":{"position":0}}\n'
)


@pytest.mark.parametrize(
    "events",
    [
        (started(), started(), tokens(0, "a"), done(1, "a")),
        # A position of 0 says the same: running, not waiting.
        (position(0, 0), started(), tokens(0, "a"), done(1, "a")),
        # `done` is published on the confirmed channel and may overtake `started` and the
        # tokens: the headers, written with the first token, still say where it stood.
        (done(1, "a"), started(), tokens(0, "a")),
    ],
    ids=["started", "position 0", "done overtaking started"],
)
async def test_a_request_that_never_waited_gets_no_queue_chunk(
    aiohttp_client: AiohttpClient, events: tuple[Delivery, ...]
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, *events)
    client = await aiohttp_client(relay_app(gw))
    response = await client.post("/chat")
    assert response.status == 200
    # Byte for byte the backend's stream, plus Corral's fields on the final chunk only.
    assert await response.read() == ANSWER
    # The headers still say where it stood: running at once.
    assert response.headers["X-Queue-Position"] == "0"
    assert response.headers["X-Estimated-Wait-Ms"] == "0"


async def test_a_request_that_never_waited_gets_no_queue_comment_over_sse(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, started(), tokens(0, "a"), done(1, "a"))
    client = await aiohttp_client(relay_app(gw, shape=SseShape(), encoder=SseEncoder()))
    assert await (await client.post("/chat")).read() == (
        b'data: {"delta":"a"}\n\ndata: {"finish_reason":"stop"}\n\ndata: [DONE]\n\n'
    )


@pytest.mark.parametrize(
    "events",
    [
        (position(1, 700), started(), tokens(0, "a"), done(1, "a")),
        # `done` overtaking `started` and the tokens: the job ran, so position 0 still comes
        # before its first token.
        (position(1, 700), done(1, "a"), started(), tokens(0, "a")),
    ],
    ids=["in order", "done overtaking started"],
)
async def test_a_request_that_waits_is_shown_its_place_then_running(
    aiohttp_client: AiohttpClient, events: tuple[Delivery, ...]
) -> None:
    gw = FakeGateway()
    gw.hub.feed(RID, *events)
    client = await aiohttp_client(relay_app(gw))
    response = await client.post("/chat")
    got = lines(await response.read())
    assert [c.get("queue_info") for c in got[:2]] == [
        {"position": 1, "estimated_wait_ms": 700},
        {"position": 0, "estimated_wait_ms": 0},
    ]
    assert got[2]["message"]["content"] == "a"
    assert response.headers["X-Queue-Position"] == "1"
    assert response.headers["X-Estimated-Wait-Ms"] == "700"


def queue_positions(got: list[dict[str, Any]]) -> list[int]:
    return [c["queue_info"]["position"] for c in got if "queue_info" in c and not c["done"]]


async def test_a_shown_position_never_rises(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    # The gateway's provisional place (3), then the lane's own reports: one higher (another
    # gateway's jobs it could not count, or a less served caller going ahead), then lower.
    gw.hub.feed(
        RID,
        position(3, 900),
        Accepted(request_id=RID, scheduler_id="s1"),
        position(5, 4000),
        position(2, 600),
        started(),
        tokens(0, "a"),
        done(1, "a"),
    )
    client = await aiohttp_client(relay_app(gw))
    response = await client.post("/chat")
    got = lines(await response.read())
    assert queue_positions(got) == [3, 3, 2, 0]
    assert response.headers["X-Queue-Position"] == "3"


async def test_a_job_admitted_again_may_move_back(aiohttp_client: AiohttpClient) -> None:
    gw = FakeGateway()
    # Admitted, then handed back (a scheduler restart) and admitted again, further back.
    gw.hub.feed(
        RID,
        Accepted(request_id=RID, scheduler_id="s1"),
        position(2, 600),
        Accepted(request_id=RID, scheduler_id="s2"),
        position(4, 1200),
        started(),
        tokens(0, "a"),
        done(1, "a"),
    )
    client = await aiohttp_client(relay_app(gw))
    got = lines(await (await client.post("/chat")).read())
    assert queue_positions(got) == [2, 4, 0]


class Beats:
    """Counts an encoder's heartbeats, so a test waits for them instead of sleeping."""

    def __init__(self, wanted: int) -> None:
        self.count = 0
        self.wanted = wanted
        self.enough = asyncio.Event()

    def beat(self) -> None:
        self.count += 1
        if self.count >= self.wanted:
            self.enough.set()


class BeatingNdjson(NdjsonEncoder):
    def __init__(self, beats: Beats) -> None:
        self.beats = beats

    def heartbeat(self) -> bytes:
        self.beats.beat()
        return super().heartbeat()


class BeatingSse(SseEncoder):
    def __init__(self, beats: Beats) -> None:
        self.beats = beats

    def heartbeat(self) -> bytes:
        self.beats.beat()
        return super().heartbeat()


QUICK_BEATS = RelayTimings(heartbeat_s=0.01, straggler_timeout_s=60.0, stored_timeout_s=0.0)


async def answer_after_heartbeats(
    gw: FakeGateway, client: Any, beats: Beats, first: Delivery
) -> tuple[web.StreamResponse, bytes]:
    """Post; once the relay has had `beats.wanted` quiet spells (after `first`), send the
    answer's tokens and final event; the response and its body."""
    gw.hub.feed(RID, first)
    posting = asyncio.create_task(client.post("/chat"))
    await beats.enough.wait()
    gw.hub.feed(RID, tokens(0, "a"), done(1, "a"))
    response = await posting
    return response, await response.read()


@pytest.mark.parametrize(
    "first",
    [
        started(),
        position(0, 0),
    ],
)
async def test_ndjson_has_no_heartbeat_before_the_first_token_of_a_request_that_never_waited(
    aiohttp_client: AiohttpClient, first: Delivery
) -> None:
    """Ollama's streams carry nothing but chunks: while the prompt is evaluated, nothing."""
    gw = FakeGateway()
    beats = Beats(2)
    client = await aiohttp_client(relay_app(gw, encoder=BeatingNdjson(beats), timings=QUICK_BEATS))
    response, raw = await answer_after_heartbeats(gw, client, beats, first)
    assert response.status == 200
    assert raw == ANSWER


async def test_sse_heartbeats_are_comments_until_the_first_token(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    beats = Beats(2)
    client = await aiohttp_client(
        relay_app(gw, shape=SseShape(), encoder=BeatingSse(beats), timings=QUICK_BEATS)
    )
    _, raw = await answer_after_heartbeats(gw, client, beats, started())
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    heartbeats = frames[: frames.index(b'data: {"delta":"a"}')]
    # Comment lines every SSE parser skips, never a data frame; no queue comment either.
    assert len(heartbeats) >= 2
    assert set(heartbeats) == {b": heartbeat"}
    assert frames[len(heartbeats) :] == [
        b'data: {"delta":"a"}',
        b'data: {"finish_reason":"stop"}',
        b"data: [DONE]",
        b"",
    ]


async def test_sse_heartbeats_while_queued_without_queue_feedback(
    aiohttp_client: AiohttpClient,
) -> None:
    """`X-Queue-Progress: 0` turns the queue comments off, not the keep-alive."""
    gw = FakeGateway()
    beats = Beats(2)
    client = await aiohttp_client(
        relay_app(
            gw, progress=False, shape=SseShape(), encoder=BeatingSse(beats), timings=QUICK_BEATS
        )
    )
    _, raw = await answer_after_heartbeats(gw, client, beats, position(3, 900))
    comments = [f for f in raw.split(b"\n\n") if f.startswith(b":")]
    assert len(comments) >= 2 and set(comments) == {b": heartbeat"}


async def test_a_waiting_stream_repeats_its_queue_feedback_counting_down_as_the_heartbeat(
    aiohttp_client: AiohttpClient,
) -> None:
    gw = FakeGateway()
    beats = Beats(1)

    class Shape(SseShape):
        def queue(self, position: int, wait_ms: int) -> Frame:
            if position == 2:
                beats.beat()  # the first shown, then each heartbeat
            return super().queue(position, wait_ms)

    beats.wanted = 3
    client = await aiohttp_client(
        relay_app(gw, shape=Shape(), encoder=SseEncoder(), timings=QUICK_BEATS)
    )
    _, raw = await answer_after_heartbeats(gw, client, beats, position(2, 3000))
    comments = [f for f in raw.split(b"\n\n") if f.startswith(b":")]
    assert b": heartbeat" not in comments
    told = [c.decode().removeprefix(": queue ").split() for c in comments[:3]]
    assert [words[0] for words in told] == ["position=2"] * 3
    # The estimate counts down from heartbeat to heartbeat (at least one interval apart).
    waits = [int(words[1].removeprefix("estimated_wait_ms=")) for words in told]
    assert waits[0] == 3000 and waits[0] > waits[1] > waits[2]


# --- the encoders ---------------------------------------------------------------------------


def test_ndjson_is_one_line_per_object_and_has_no_comments() -> None:
    encoder = NdjsonEncoder()
    assert encoder.encode(Data({"a": 1, "b": "é"})) == '{"a":1,"b":"é"}\n'.encode()
    assert encoder.encode(Comment("queue position=1")) == b""
    assert encoder.end() == b""


def test_sse_frames_comments_and_the_closing_done() -> None:
    encoder = SseEncoder()
    assert encoder.encode(Data({"a": 1})) == b'data: {"a":1}\n\n'
    assert encoder.encode(Comment("queue position=1")) == b": queue position=1\n\n"
    # A newline cannot end the comment and start a field.
    assert encoder.encode(Comment("one\ntwo")) == b": one\n: two\n\n"
    assert encoder.end() == b"data: [DONE]\n\n"
