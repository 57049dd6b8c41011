"""Turns one request's event stream into the HTTP answer its client expects: the state machine.

Streaming clients get queue feedback while they wait, then the backend's chunks, then the final
chunk with Corral's fields. Queue feedback only when the request really waits: each event
decides as it comes, holding nothing back (a `position` > 0 is shown at once; `started` shows
"position 0" only to a client already shown where it waited), so a stream that never queued is
byte for byte the backend's own. Until the first token, a quiet stream gets heartbeats: the
queue feedback again while it is shown, else the encoder's keep-alive (an SSE comment; NDJSON
has none, as Ollama's streams have none). Non-streaming clients get one object, assembled from
the whole stream. Errors before anything was written are raised (`JobFailed`, a CorralError)
for the surface to render with their status; errors after the first byte end the stream with
an error frame, as Ollama does.

A job beyond the scheduler's admission window is placed by the gateway itself (places.py): its
first `position` comes from the ticket before the publish, so its headers go out at once, and
falls as the lane moves until the scheduler admits it and reports its own. Positions shown only
fall: one reported above a position already known is held at that one (`_no_rise`), except
after a second `accepted`, a job admitted again after a scheduler restart or a broker reconnect.

What the pieces look like is not decided here: a surface passes a `ChunkShape` (Ollama's chunks
in `ollama/chunks.py`; OpenAI's deltas) and a `StreamEncoder` (NDJSON, SSE: encoders.py). The
relay reads its events from a `JobTicket` and settles it when the job is over, so leaving early
(the client gone, the queue timeout) cancels the job.

A request's total deadline (`timeout_ms`, `options.timeout`, `X-Request-Timeout`:
request_terms.py) travels with its job, and the lane enforces it: past it while queued, 408
`queue_timeout` (the relay answers that itself, as for a queue timeout); past it while running,
the lane stops the generation and sends 504 `backend_timeout`. Should that not come (the
scheduler gone), the relay answers the 504 itself `FINISH_GRACE_S` later and leaves, which
cancels the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import Counter

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    CANCELED_STATUS,
    Accepted,
    Cancelled,
    Done,
    Failed,
    Job,
    JobKind,
    Position,
    Started,
    Stored,
    Tokens,
)
from corral_common.timeouts import within
from corral_gateway import metrics
from corral_gateway.encoders import Frame, StreamEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.ordering import TokenOrder
from corral_gateway.responses import json_response
from corral_gateway.ticket import BROKER_LOST_MESSAGE, JobTicket, failure_error
from corral_gateway.usage import note_stream_error, note_truncated, note_waited

log = structlog.get_logger(__name__)

INTERRUPTED_MESSAGE = "generation was interrupted by a scheduler restart; please retry"
LOST_IN_TRANSIT_MESSAGE = "lost part of the answer in transit; please retry"
# How long past a request's total deadline the relay waits for the lane's own 504 (which says
# how far the generation got) before answering it itself.
FINISH_GRACE_S = 2.0

POSITIONS_HELD = Counter(
    "corral_gateway_positions_held_total",
    "Positions reported above one a waiting request already knew, held at the lower one so "
    "a shown position never rises",
)


@dataclass(frozen=True)
class RelayTimings:
    heartbeat_s: float
    straggler_timeout_s: float
    stored_timeout_s: float


class JobFailed(CorralError):
    """A job's failure before anything was written, as the relay reports it. Ollama's clients
    get its text alone (`{"error": "<text>"}`), whatever its type."""

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}


class ChunkShape(Protocol):
    """What one surface's answer is made of. Chunks are the backend's own (Ollama's native
    chunks); `extras` are Corral's additions to the final answer (`request_id`, `queue_info`,
    `context_info`, see `ollama.chunks.corral_fields`)."""

    def queue(self, position: int, wait_ms: int) -> Frame:
        """Queue feedback while the request waits (repeated as a heartbeat). Position 0 (now
        running) is asked for only after a position > 0 was shown."""
        ...

    def chunk(self, chunk: dict[str, Any]) -> list[Frame]:
        """One backend chunk as the client's frames (possibly none)."""
        ...

    def passthrough(self, tokens: Tokens, encoder: StreamEncoder) -> bytes | None:
        """The batch's frames as bytes written as they came (`hub.RawTokens`), for a shape
        whose frames are the backend's chunks unchanged; None: `chunk` each one."""
        ...

    def final(self, done: Done, extras: dict[str, Any]) -> list[Frame]:
        """The stream's last frames."""
        ...

    def failure(self, error: CorralError) -> list[Frame]:
        """An error after the stream started: the stream's last frames."""
        ...

    def whole(self, chunks: list[dict[str, Any]], done: Done, extras: dict[str, Any]) -> Any:
        """The non-streaming answer's body, from all chunks."""
        ...


class Extras(Protocol):
    def __call__(self, done: Done, first_position: int) -> dict[str, Any]:
        """Corral's additions to the final answer."""
        ...


class Relay:
    def __init__(
        self,
        request: web.Request,
        *,
        ticket: JobTicket,
        kind: JobKind,
        stream: bool,
        ext: Extensions,
        shape: ChunkShape,
        encoder: StreamEncoder,
        extras: Extras,
        timings: RelayTimings,
    ) -> None:
        self.request = request
        self.ticket = ticket
        self.events = ticket.events
        self.kind = kind
        self.stream = stream
        self.ext = ext
        self.shape = shape
        self.encoder = encoder
        self.extras = extras
        self.timings = timings
        self.arrived = time.monotonic()
        self.response: web.StreamResponse | None = None
        # The relay ran to an end: the answer (or the error) is written.
        self.finished = False
        self.first_position: int | None = None
        self.first_estimate_ms: int | None = None
        self.latest: tuple[int, int] | None = None
        self.started = False
        # The lowest position known (0 once running); a later, higher one is held at it.
        self.floor: int | None = None
        # `accepted` events seen: a second one is a job admitted again (redelivered).
        self.admissions = 0
        self.deadline = ext.deadline()
        self.finish_by = ext.finish_by()
        # The job carries the request's deadline and retry terms to the lane.
        ticket.terms = ext.terms
        self.shown: tuple[int, int] | None = None
        # When `shown` was written (monotonic): a heartbeat counts its wait down from then.
        self.shown_at = 0.0
        self.wrote_tokens = False
        self.order = TokenOrder()
        self.collected: list[dict[str, Any]] = []

    @property
    def headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.ext.request_id}
        if self.ext.session_id is not None:
            headers["X-Session-Id"] = self.ext.session_id
        if self.first_position is not None:
            headers["X-Queue-Position"] = str(self.first_position)
            headers["X-Estimated-Wait-Ms"] = str(self.first_estimate_ms or 0)
        return headers

    @property
    def where(self) -> tuple[int, int] | None:
        """(position, estimated wait ms) as last heard; (0, 0) once running."""
        return (0, 0) if self.started else self.latest

    @property
    def job(self) -> Job | None:
        """The job as submitted (whose it is, its model and priority); None before."""
        return self.ticket.job

    async def run(self) -> web.StreamResponse:
        while True:
            if (expired := self._expired()) is not None:
                # Not settled: the job is still queued or running and must be cancelled, even
                # though the client has its answer (a 408, or the 504 the lane did not send).
                return await self._fail(expired, settle=False)
            match await self._next(self._wait_s()):
                case None:
                    if (expired := self._expired()) is not None:
                        return await self._fail(expired, settle=False)
                    await self._heartbeat()
                case Accepted():
                    self.admissions += 1
                    if self.admissions > 1:
                        # Admitted again (a scheduler restart, a broker reconnect): its place
                        # was given up, and the new one may well be further back.
                        self.floor = None
                case Position(position=position, estimated_wait_ms=wait_ms):
                    position = self._no_rise(position)
                    if self.first_position is None:
                        self.first_position = position
                        self.first_estimate_ms = wait_ms
                    self.latest = (position, wait_ms)
                    await self._show(position, wait_ms)
                case Started(redelivered=redelivered, waited_ms=waited_ms):
                    self.started = True
                    self.floor = 0
                    note_waited(waited_ms)
                    if redelivered and self.wrote_tokens:
                        if self.stream:
                            # Part of an answer is already with the client: a second one
                            # would be spliced onto it.
                            return await self._fail(
                                CorralError(ErrorType.INTERRUPTED, INTERRUPTED_MESSAGE)
                            )
                        # Nothing was written yet: start over, transparently.
                        self._restart()
                    if self.first_position is None:
                        self.first_position = 0
                    await self._show(0, 0)
                case Tokens() as tokens:
                    await self._take(tokens)
                case Done() as done:
                    return await self._finish(done)
                case Failed() as failed:
                    if failed.token_batches:
                        # What it streamed before failing goes out first: the failure comes on
                        # the confirmed channel and may overtake those tokens, and answering
                        # before them would turn a mid-stream error into an HTTP 500.
                        await self._drain(failed.token_batches)
                    # A non-streaming request that failed mid-way gets the error alone, as
                    # from Ollama.
                    retry = failed.details.get("retry_after_s")
                    error = failure_error(failed)
                    if isinstance(retry, int):
                        error.headers = {"Retry-After": str(retry)}
                    return await self._fail(error)
                case Cancelled():
                    return await self._fail(
                        CorralError(
                            ErrorType.INTERRUPTED, "request canceled", status=CANCELED_STATUS
                        )
                    )
                case BrokerLost():
                    return await self._fail(
                        CorralError(
                            ErrorType.BROKER_UNAVAILABLE,
                            BROKER_LOST_MESSAGE,
                            headers={"Retry-After": "5"},
                        )
                    )

    def _no_rise(self, position: int) -> int:
        """`position`, unless one lower was already known: a shown position never rises. The
        gateway's provisional places (places.py) are upper bounds with one gateway; with
        several, or when a later job of a less served caller goes ahead (fair share), the lane
        may report more. A job admitted again after it was handed back is the exception."""
        if self.floor is not None and position > self.floor:
            POSITIONS_HELD.inc()
            return self.floor
        self.floor = position
        return position

    def _restart(self) -> None:
        log.info("job restarted on another scheduler; answer collected afresh")
        self.wrote_tokens = False
        self.collected = []
        self.order = TokenOrder()

    def _wait_s(self) -> float:
        """Until the next heartbeat, or a deadline if one comes first."""
        now = time.time()
        waits = [self.timings.heartbeat_s]
        if self.deadline is not None and not self.started:
            waits.append(self.deadline - now)
        if self.finish_by is not None:
            waits.append(self.finish_by + FINISH_GRACE_S - now)
        return max(0.0, min(waits))

    def _expired(self) -> CorralError | None:
        """The answer for a request past its deadline: 408 while it waits in the queue (its
        queue timeout, or its total deadline if sooner); 504 once it runs, when the lane has
        not said so itself within `FINISH_GRACE_S`. None while in time."""
        now = time.time()
        if self.deadline is not None and not self.started and now >= self.deadline:
            waited_s = time.monotonic() - self.arrived
            return CorralError(
                ErrorType.QUEUE_TIMEOUT,
                f"request timed out in the queue after {waited_s:.1f} s",
                status=408,
            )
        if self.finish_by is not None and now >= self.finish_by + FINISH_GRACE_S:
            elapsed_s = time.monotonic() - self.arrived
            return CorralError(
                ErrorType.BACKEND_TIMEOUT,
                f"request timed out after {elapsed_s:.1f} s (its deadline); the generation "
                "was stopped and its partial answer is not kept",
                status=504,
            )
        return None

    async def _next(self, wait_s: float) -> Delivery | None:
        try:
            return await within(self.events.get(), wait_s)
        except TimeoutError:
            return None

    async def _take(self, tokens: Tokens) -> None:
        chunks = self.order.push(tokens.seq, tokens.chunks)
        if not (self.stream and chunks):
            for chunk in chunks:
                await self._emit(chunk)
            return
        if not self.wrote_tokens:
            metrics.CLIENT_TTFT.labels(self.kind).observe(time.monotonic() - self.arrived)
        self.wrote_tokens = True
        # A batch's frames go out in one write: a fast stream's batch holds hundreds of tokens,
        # and a write (a chunked-encoding frame and a socket send) per token was the gateway's
        # largest cost in relaying it.
        if len(chunks) == len(tokens.chunks):
            # The batch came alone (not with later ones that had waited for it): a shape that
            # relays the backend's chunks unchanged writes their text as it came.
            raw = self.shape.passthrough(tokens, self.encoder)
            if raw is not None:
                await self._send(raw)
                return
        encode = self.encoder.encode
        await self._send(b"".join(encode(f) for chunk in chunks for f in self.shape.chunk(chunk)))

    async def _show(self, position: int, wait_ms: int) -> None:
        if not (self.stream and self.ext.queue_progress) or self.wrote_tokens:
            return
        if position == 0 and self.shown is None:
            # Running without having waited: nothing to tell, and a queue chunk here would be
            # the one byte that is not the backend's (Open WebUI's OpenAI conversion made it a
            # premature `finish_reason: "stop"`). Decided now, on this event: nothing waits.
            return
        if (
            self.shown is not None
            and self.shown[0] == position
            and (position == 0 or abs(self.shown[1] - wait_ms) < 1000)
        ):
            return
        self.shown = (position, wait_ms)
        self.shown_at = time.monotonic()
        await self._write(self.shape.queue(position, wait_ms))

    async def _heartbeat(self) -> None:
        """A quiet stream before its first token (waiting, loading, evaluating the prompt): the
        queue feedback again while the client is shown it, else the encoder's keep-alive."""
        if not self.stream or self.wrote_tokens:
            return
        if self.shown is not None:
            # The wait counts down between the lane's updates: the client is told what is left
            # of the last estimate, not the same number again.
            position, wait_ms = self.shown
            now = time.monotonic()
            left_ms = max(0, wait_ms - round((now - self.shown_at) * 1000))
            self.shown, self.shown_at = (position, left_ms), now
            await self._write(self.shape.queue(position, left_ms))
            return
        keepalive = self.encoder.heartbeat()
        if keepalive:
            await self._send(keepalive)

    async def _emit(self, chunk: dict[str, Any]) -> None:
        if not self.wrote_tokens:
            metrics.CLIENT_TTFT.labels(self.kind).observe(time.monotonic() - self.arrived)
        self.wrote_tokens = True
        if self.stream:
            for frame in self.shape.chunk(chunk):
                await self._write(frame)
        else:
            self.collected.append(chunk)

    async def _finish(self, done: Done) -> web.StreamResponse:
        # The job is over (and its tokens are charged to the caller's quota), whatever
        # becomes of its answer from here.
        self.ticket.settle(done)
        if not self.started:
            # The final event travels on another channel than `started` and the tokens, and
            # may overtake them all: a job that is done ran, so it is told as running (a client
            # shown a place sees position 0 before the tokens, and an answer that never
            # waited says position 0, its headers included, written with the first token).
            self.started = True
            if self.first_position is None:
                self.first_position = 0
                self.first_estimate_ms = 0
            await self._show(0, 0)
        complete = await self._drain(done.token_batches)
        if not complete and self.stream:
            return await self._fail(CorralError(ErrorType.INTERNAL_ERROR, LOST_IN_TRANSIT_MESSAGE))
        if not self.wrote_tokens:
            metrics.CLIENT_TTFT.labels(self.kind).observe(time.monotonic() - self.arrived)
        if self.ext.session_id is not None:
            self._in_flight(self.ext.session_id)
        extras = self.extras(done, self.first_position or 0)
        context_info = extras.get("context_info")
        if isinstance(context_info, dict) and "truncated" in context_info:
            note_truncated(done.model, bool(context_info["truncated"]))
        self.finished = True
        if self.stream:
            for frame in self.shape.final(done, extras):
                await self._write(frame)
            return await self._end(complete=True)
        return json_response(self.shape.whole(self.collected, done, extras), 200, self.headers)

    async def _drain(self, batches: int) -> bool:
        """Wait for token batches still in transit; the final event may overtake them."""
        deadline = time.monotonic() + self.timings.straggler_timeout_s
        while self.order.received < batches:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = await self._next(remaining)
            if isinstance(event, Tokens):
                await self._take(event)
        return True

    def _in_flight(self, session_id: str) -> None:
        """The turn is done and the store is writing it: the answer goes out now, and the next
        request on the session at this gateway waits for the write instead (turns_in_flight.py),
        so a client that sends its next message on receipt still finds this turn. A `stored`
        that already came is in the ticket's queue (the hub hands later ones to the record)."""
        timeout_s = self.timings.stored_timeout_s
        if timeout_s <= 0:
            return
        turns = self.ticket.gateway.turns
        turns.record(session_id, self.ext.request_id, timeout_s)
        while not self.events.empty():
            if isinstance(self.events.get_nowait(), Stored):
                turns.settle(self.ext.request_id)

    async def _fail(self, error: CorralError, *, settle: bool = True) -> web.StreamResponse:
        """End with `error`: raised for the surface to render when nothing was written yet,
        else as the stream's last frame."""
        self.finished = True
        if settle:
            # The job is over (failed, cancelled, or its answer is broken and dropped).
            self.ticket.settle()
        if self.response is None:
            raise JobFailed(
                error.error_type,
                error.message,
                status=error.status,
                details=error.details,
                headers={**self.headers, **error.headers},
            )
        note_stream_error(error.error_type)
        for frame in self.shape.failure(error):
            await self._write(frame)
        return await self._end(complete=False)

    async def _end(self, *, complete: bool) -> web.StreamResponse:
        assert self.response is not None
        if complete:
            await self.response.write(self.encoder.end())
        await self.response.write_eof()
        return self.response

    async def _write(self, frame: Frame) -> None:
        await self._send(self.encoder.encode(frame))

    async def _send(self, data: bytes) -> None:
        """Write `data`, starting the response (status 200, the headers known now) first."""
        if self.response is None:
            response = web.StreamResponse(status=200, headers=self.headers)
            response.content_type = self.encoder.content_type
            await response.prepare(self.request)
            self.response = response
        if data:
            await self.response.write(data)
