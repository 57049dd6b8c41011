"""Turns one request's event stream into the HTTP answer its client expects.

Streaming clients get queue chunks while they wait, then the backend's own chunks, then the
final chunk with Corral's fields. Non-streaming clients get one object, assembled as Ollama
assembles it. Errors before anything was written keep their HTTP status; errors after the first
byte end the stream with an `{"error": ...}` line, as Ollama does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from corral_common import jsonutil
from corral_common.messages import (
    CANCELED_STATUS,
    Cancelled,
    Done,
    Failed,
    JobKind,
    Position,
    Started,
    Stored,
    Tokens,
)
from corral_common.timeouts import within
from corral_gateway import metrics
from corral_gateway.extensions import Extensions
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.ordering import TokenOrder
from corral_gateway.wire import NDJSON, assemble, corral_fields, json_response, queue_chunk

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RelayTimings:
    heartbeat_s: float
    straggler_timeout_s: float
    stored_timeout_s: float


class Relay:
    def __init__(
        self,
        request: web.Request,
        *,
        kind: JobKind,
        model: str,
        stream: bool,
        ext: Extensions,
        events: asyncio.Queue[Delivery],
        messages_used: int,
        timings: RelayTimings,
        context_info: dict[str, Any] | None = None,
    ) -> None:
        self.request = request
        self.kind = kind
        self.model = model
        self.stream = stream
        self.ext = ext
        self.events = events
        self.messages_used = messages_used
        self.timings = timings
        self.context_info = context_info
        self.arrived = time.monotonic()
        self.response: web.StreamResponse | None = None
        self.finished = False
        self.first_position: int | None = None
        self.first_estimate_ms: int | None = None
        self.latest: tuple[int, int] | None = None
        self.started = False
        # The queue timeout fired: the job must be cancelled even though the client has its
        # answer (a 408).
        self.timed_out = False
        self.deadline = ext.deadline()
        self.shown: tuple[int, int] | None = None
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

    async def run(self) -> web.StreamResponse:
        while True:
            match await self._next(self._wait_s()):
                case None:
                    if self._past_deadline():
                        self.timed_out = True
                        waited_s = time.monotonic() - self.arrived
                        return await self._fail(
                            408, f"request timed out in the queue after {waited_s:.1f} s"
                        )
                    await self._heartbeat()
                case Position(position=position, estimated_wait_ms=wait_ms):
                    if self.first_position is None:
                        self.first_position = position
                        self.first_estimate_ms = wait_ms
                    self.latest = (position, wait_ms)
                    await self._show(position, wait_ms)
                case Started(redelivered=redelivered):
                    self.started = True
                    if redelivered and self.wrote_tokens:
                        if self.stream:
                            # Part of an answer is already with the client: a second one
                            # would be spliced onto it.
                            return await self._fail(
                                500,
                                "generation was interrupted by a scheduler restart; please retry",
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
                case Failed(status=status, message=message, details=details):
                    # A non-streaming request that failed mid-way gets the error alone, as
                    # from Ollama.
                    retry = details.get("retry_after_s")
                    extra = {"Retry-After": str(retry)} if isinstance(retry, int) else None
                    return await self._fail(status, message, extra)
                case Cancelled():
                    return await self._fail(CANCELED_STATUS, "request canceled")
                case BrokerLost():
                    return await self._fail(
                        503,
                        "lost the connection to Corral's message broker; please retry",
                        {"Retry-After": "5"},
                    )

    def _restart(self) -> None:
        log.info("job restarted on another scheduler; answer collected afresh")
        self.wrote_tokens = False
        self.collected = []
        self.order = TokenOrder()

    def _wait_s(self) -> float:
        """Until the next heartbeat, or the queue deadline if that comes first."""
        if self.deadline is None or self.started:
            return self.timings.heartbeat_s
        return max(0.0, min(self.timings.heartbeat_s, self.deadline - time.time()))

    def _past_deadline(self) -> bool:
        return self.deadline is not None and not self.started and time.time() >= self.deadline

    async def _next(self, wait_s: float) -> Delivery | None:
        try:
            return await within(self.events.get(), wait_s)
        except TimeoutError:
            return None

    async def _take(self, tokens: Tokens) -> None:
        for chunk in self.order.push(tokens.seq, tokens.chunks):
            await self._emit(chunk)

    async def _show(self, position: int, wait_ms: int) -> None:
        if not (self.stream and self.ext.queue_progress) or self.wrote_tokens:
            return
        if (
            self.shown is not None
            and self.shown[0] == position
            and (position == 0 or abs(self.shown[1] - wait_ms) < 1000)
        ):
            return
        self.shown = (position, wait_ms)
        await self._write(queue_chunk(self.kind, self.model, position, wait_ms))

    async def _heartbeat(self) -> None:
        if self.shown is not None and not self.wrote_tokens and self.response is not None:
            position, wait_ms = self.shown
            await self._write(queue_chunk(self.kind, self.model, position, wait_ms))

    async def _emit(self, chunk: dict[str, Any]) -> None:
        if not self.wrote_tokens:
            metrics.CLIENT_TTFT.labels(self.kind).observe(time.monotonic() - self.arrived)
        self.wrote_tokens = True
        if self.stream:
            await self._write(chunk)
        else:
            self.collected.append(chunk)

    async def _finish(self, done: Done) -> web.StreamResponse:
        complete = await self._drain(done.token_batches)
        if not complete and self.stream:
            return await self._fail(500, "lost part of the answer in transit; please retry")
        if not self.wrote_tokens:
            metrics.CLIENT_TTFT.labels(self.kind).observe(time.monotonic() - self.arrived)
        if self.ext.session_id is not None:
            await self._await_stored()
        extras = corral_fields(
            request_id=self.ext.request_id,
            session_id=self.ext.session_id,
            waited_ms=done.waited_ms,
            first_position=self.first_position or 0,
            messages_used=self.messages_used,
            final=done.final,
            context_info=self.context_info,
        )
        self.finished = True
        if self.stream:
            await self._write({**done.final, **extras})
            assert self.response is not None
            await self.response.write_eof()
            return self.response
        body = {**assemble(self.kind, self.collected, done.final, done.text), **extras}
        return json_response(body, 200, self.headers)

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

    async def _await_stored(self) -> None:
        """Hold the final chunk until the session store has written the turn (bounded), so a
        client that sends its next message on receipt finds this turn in its history."""
        deadline = time.monotonic() + self.timings.stored_timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if isinstance(await self._next(remaining), Stored):
                return
        log.warning("session store did not confirm the turn in time")

    async def _fail(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> web.StreamResponse:
        self.finished = True
        if self.response is None:
            return json_response({"error": message}, status, {**self.headers, **(headers or {})})
        await self._write({"error": message})
        await self.response.write_eof()
        return self.response

    async def _write(self, obj: dict[str, Any]) -> None:
        if self.response is None:
            response = web.StreamResponse(status=200, headers=self.headers)
            response.content_type = NDJSON
            await response.prepare(self.request)
            self.response = response
        await self.response.write(jsonutil.ndjson_line(obj))
