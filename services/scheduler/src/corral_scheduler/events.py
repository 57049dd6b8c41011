"""Publishing a job's events to the gateway that holds its client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson
import structlog

from corral_common.broker import Broker, BrokerUnavailable, Unroutable, encode
from corral_common.messages import (
    FINAL_KINDS,
    Job,
    JobEvent,
    Position,
    Positions,
    Started,
    Tokens,
)
from corral_common.topology import event_key, event_route, positions_key

log = structlog.get_logger(__name__)

# The token batcher's window (TokenBatcher; the scheduler's `token_batch_ms` setting).
TOKEN_WINDOW_S = 0.05
# A batch that reaches this many chunks goes out without waiting its window out, so a backend
# faster than the relay streams through it in steps the gateway and client work on while the
# rest is generated, not in one lump at the end (at real token rates a window never fills).
TOKEN_BATCH_MAX = 256
# Whether `started` rides on the first token batch (EventSink): on once every gateway hands a
# batch's `started` out before its tokens (hub.py).
MERGE_STARTED = True


@dataclass
class _Held:
    job: Job
    started: Started
    timer: asyncio.TimerHandle


class EventSink:
    def __init__(
        self,
        broker: Broker,
        token_window_s: float | None = None,
        *,
        merge_started: bool = MERGE_STARTED,
    ) -> None:
        self._broker = broker
        # The window of this scheduler's token batchers: given, else the scheduler's
        # `token_batch_ms` setting (on the broker's settings), else TOKEN_WINDOW_S.
        if token_window_s is None:
            batch_ms = getattr(getattr(broker, "settings", None), "token_batch_ms", None)
            token_window_s = TOKEN_WINDOW_S if batch_ms is None else float(batch_ms) / 1000
        self.token_window_s = token_window_s
        # `started` held back for up to a window, to ride on the job's first token batch
        # (`Tokens.started`) instead of being a message of its own. Needs gateways that hand
        # it out of the batch (hub.py); with a window of 0 nothing is held.
        self.merge_started = merge_started and token_window_s > 0
        self._held: dict[str, _Held] = {}
        # A held `started` whose window ran out, being published: the job's next event
        # waits for it, so the gateway never sees a token before its `started`.
        self._releasing: dict[str, asyncio.Task[None]] = {}

    async def send(self, job: Job, event: JobEvent) -> None:
        """Final events are durable and confirmed (the job is acked only once its final event
        is confirmed; the session store relies on `done`); the rest are transient and
        best-effort. A `done` with a session is routed as `turn` (topology.TURN_ROUTE), so
        only those reach the session store's queue. With `merge_started`, a `started` goes
        out with the first token batch that follows within the window, else alone when the
        window ends or before any other event of its job: always first, never lost."""
        if self.merge_started and isinstance(event, Started):
            self._hold(job, event)
            return
        if self._held or self._releasing:
            event = await self._unhold(job, event)
        await self._publish(job, event)

    async def send_tokens(self, job: Job, seq: int, lines: list[bytes]) -> None:
        """A `Tokens` batch whose chunks are `lines` (each one chunk's JSON, as the backend
        wrote it), published without parsing or encoding them again: the message is written
        around them (`tokens_body`). The job's held `started` rides on it, as in `send`."""
        started: Started | None = None
        if self._held or self._releasing:
            started = await self._take_held(job)
        key = event_key(job.gateway_id, job.request_id, "token")
        body = tokens_body(job.request_id, seq, lines, started)
        try:
            await self._broker.publish_event(key, body, durable=False)
        except Unroutable:
            log.info("event had no listener", kind="token")

    async def _publish(self, job: Job, event: JobEvent) -> None:
        kind = str(event.kind)
        key = event_key(
            job.gateway_id, job.request_id, event_route(kind, getattr(event, "session_id", None))
        )
        try:
            await self._broker.publish_event(key, encode(event), durable=kind in FINAL_KINDS)
        except Unroutable:
            # Nobody is listening for this request any more (its gateway went away); the job's
            # outcome stands, there is just no one to tell.
            log.info("event had no listener", kind=kind)

    def _hold(self, job: Job, started: Started) -> None:
        loop = asyncio.get_running_loop()
        rid = job.request_id
        timer = loop.call_later(self.token_window_s, self._release, rid)
        self._held[rid] = _Held(job, started, timer)

    def _release(self, request_id: str) -> None:
        """The window ended without a token batch: `started` goes out alone."""
        held = self._held.pop(request_id, None)
        if held is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._publish_quietly(held.job, held.started), name="started"
        )
        self._releasing[request_id] = task
        task.add_done_callback(lambda _: self._releasing.pop(request_id, None))

    async def _publish_quietly(self, job: Job, event: JobEvent) -> None:
        try:
            await self._publish(job, event)
        except Exception as exc:
            log.warning("event not published", kind=event.kind, error=str(exc))

    async def _unhold(self, job: Job, event: JobEvent) -> JobEvent:
        """`event` with the job's held `started` on it (a token batch), or after it."""
        started = await self._take_held(job)
        if started is None:
            return event
        if isinstance(event, Tokens):
            return event.model_copy(update={"started": started})
        await self._publish(job, started)
        return event

    async def _take_held(self, job: Job) -> Started | None:
        """The job's held `started`, no longer held (None if none is); one whose window ran
        out is published first."""
        rid = job.request_id
        releasing = self._releasing.get(rid)
        if releasing is not None:
            await asyncio.shield(releasing)
        held = self._held.pop(rid, None)
        if held is None:
            return None
        held.timer.cancel()
        return held.started

    async def send_positions(self, gateway_id: str, positions: list[Position]) -> bool:
        """One gateway's position updates in one transient message; never raises (but for
        cancellation): False when it could not be published."""
        key = positions_key(gateway_id)
        try:
            await self._broker.publish_event(
                key, encode(Positions(positions=positions)), durable=False
            )
        except Unroutable:
            log.info("positions had no listener", gateway_id=gateway_id)
        except BrokerUnavailable as exc:
            log.warning("positions not published", error=str(exc))
            return False
        except Exception:
            log.exception("positions not published")
            return False
        return True

    async def reaches_a_listener(self, job: Job, event: JobEvent) -> bool:
        """Publish durably with `mandatory`: False when no queue takes it, meaning the gateway
        that held the job's client is gone (or was restarted, failing its requests)."""
        key = event_key(job.gateway_id, job.request_id, event.kind)
        try:
            await self._broker.publish_event(key, encode(event), durable=True)
        except Unroutable:
            return False
        except BrokerUnavailable:
            return True  # unknown; the job's own events will tell
        return True

    async def send_quietly(self, job: Job, event: JobEvent) -> bool:
        """Publish, never raising (but for cancellation): True when the event went out or had
        no one to go to, False when it could not be published. Used on the paths that must
        carry on whatever happens (failures, cancels, positions): an unexpected error here
        (a routing key over 255 bytes raised ValueError) used to end the executor's loop."""
        try:
            await self.send(job, event)
        except BrokerUnavailable as exc:
            log.warning("event not published", kind=event.kind, error=str(exc))
            return False
        except Exception:
            log.exception("event not published", kind=event.kind)
            return False
        return True


def tokens_body(request_id: str, seq: int, lines: list[bytes], started: Started | None) -> bytes:
    """A `Tokens` message as `encode` would write it, but for its chunks: `lines` as they are,
    one per line of the message (a newline between array elements is JSON whitespace, and a
    compact JSON line has none of its own), so a gateway can take each chunk's text without
    parsing the batch. Every reader of `Tokens` reads it as it reads any other."""
    head = b'{"kind":"token","request_id":%b,"seq":%d,"chunks":[\n' % (
        orjson.dumps(request_id),
        seq,
    )
    tail = b"\n]}" if started is None else b'\n],"started":%b}' % encode(started)
    return head + b",\n".join(lines) + tail


T = TypeVar("T")


class TokenBatcher(Generic[T]):
    """Forwards chunks as they arrive, at most one batch per `window_s`.

    The first chunk goes out at once (an idle lane adds no latency to the first token). While
    a batch is being published, and for the rest of `window_s` after its publish began, the
    chunks that arrive pile up and go out together as the next batch; a chunk that comes after
    a quiet spell longer than the window goes out at once again. `close()` flushes what is
    left without waiting out the window. So a fast backend is a handful of messages whatever
    its length, and one at real token rates (tens of milliseconds a token) is one message per
    window, not one per token: each token is at most `window_s` late. 0 turns the window off
    (coalescing only while a publish is under way). A batch that reaches `max_chunks` ends its
    window early.
    """

    def __init__(
        self,
        publish: Callable[[int, list[T]], Awaitable[None]],
        window_s: float = TOKEN_WINDOW_S,
        max_chunks: int = TOKEN_BATCH_MAX,
    ) -> None:
        self._publish = publish
        self._window_s = window_s
        self._max_chunks = max_chunks
        self._pending: list[T] = []
        self._wake = asyncio.Event()
        self._closed = False
        # Set on close, or when the pending batch is full: its window ends now.
        self._due = asyncio.Event()
        self._sent = 0
        self._task = asyncio.create_task(self._pump(), name="token-batcher")

    def add(self, chunk: T) -> None:
        self._pending.append(chunk)
        self._wake.set()
        if len(self._pending) >= self._max_chunks:
            self._due.set()

    def extend(self, chunks: list[T]) -> None:
        self._pending += chunks
        self._wake.set()
        if len(self._pending) >= self._max_chunks:
            self._due.set()

    async def close(self) -> int:
        """Flush and stop; returns how many batches were published."""
        self._closed = True
        self._due.set()
        self._wake.set()
        await self._task
        return self._sent

    async def abort(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                began = loop.time()
                batch, self._pending = self._pending, []
                if not self._closed:
                    self._due.clear()
                await self._publish(self._sent, batch)
                self._sent += 1
                left = began + self._window_s - loop.time()
                if left > 0 and not self._due.is_set():
                    # The window: what arrives meanwhile goes out as one batch after it (or at
                    # once on close, or once the batch is full).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._due.wait()
            if self._closed:
                return
