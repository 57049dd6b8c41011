"""Persisting finished turns from `done` events, whether or not the client is still there.

The queue `session-store.turns` (quorum, durable) is bound to `corral.events` with
`gw.*.*.turn`: the schedulers route a `done` that carries a session's turn as `turn`
(topology.TURN_ROUTE), so the queue gets exactly those, next to the gateway's own copy, and
never the `done` of a chat without a session (which would cost a quorum write, a confirm and a
delivery, only to be acked and ignored). The binding every `done` had before (`gw.*.*.done`)
is removed at start. It is single-active-consumer: one store replica writes at a time (the
others are hot standbys), so one session's turns are applied in the order they arrived,
cluster-wide.

Inside that consumer, turns of different sessions are written concurrently (up to the
prefetch window), turns of one session one after another, in delivery order. A message is
acked only after its turn is written (or found already written: a redelivery changes
nothing). A database error is retried in place, which keeps the session's order, and if the
database stays away the message goes back to the queue (nack with requeue): no turn is lost.
A turn asked before its session was deleted (or purged, or every
session cleared) is acked and dropped, so the deletion holds (store.py, "Deletions"). Events
without a session id (from a scheduler that routed every `done` here) are acked and ignored;
events that cannot be parsed or stored at all (malformed, too large) are logged and dropped,
since retrying them cannot succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from bson.errors import BSONError
from pydantic import ValidationError
from pymongo.errors import DocumentTooLarge, PyMongoError

from corral_common.broker import Broker, BrokerUnavailable, encode
from corral_common.messages import Done, Stored
from corral_common.telemetry import extract_context, tracer
from corral_common.topology import (
    EVENTS_EXCHANGE,
    LEGACY_DONE_BINDING,
    TURNS_BINDING,
    event_key,
)
from corral_session_store import metrics
from corral_session_store.sessions import SessionService
from corral_session_store.store import WriteOutcome
from corral_session_store.writes import KeyedLocks

__all__ = ["DONE_BINDING", "TURNS_QUEUE", "KeyedLocks", "TurnConsumer", "turns_queue_arguments"]

log = structlog.get_logger(__name__)

TURNS_QUEUE = "session-store.turns"
DONE_BINDING = TURNS_BINDING


def turns_queue_arguments(max_length: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        # A bound, not backpressure: with the store down for long, the oldest events go rather
        # than the schedulers' `done` publishes being refused (`reject-publish` would fail them).
        "x-max-length": max_length,
        "x-overflow": "drop-head",
    }


# Errors no retry can fix: the turn cannot be represented as a document.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    DocumentTooLarge,
    BSONError,
    UnicodeEncodeError,
    ValueError,
    TypeError,
)


class TurnConsumer:
    def __init__(
        self,
        broker: Broker,
        service: SessionService,
        *,
        prefetch: int,
        retry_s: float,
        queue_max_length: int = 100_000,
        on_database: Callable[[bool], None] | None = None,
    ) -> None:
        self.broker = broker
        self.service = service
        self.prefetch = prefetch
        self.retry_s = retry_s
        self.queue_max_length = queue_max_length
        self._on_database = on_database
        # Shared with the service: an assembly waits for its session's writes in line here.
        self._locks = service.writes
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self.consuming = False

    async def start(self) -> None:
        self._channel = await self.broker.channel(prefetch=self.prefetch)
        exchange = await self._channel.get_exchange(EVENTS_EXCHANGE)
        self._queue = await self._channel.declare_queue(
            TURNS_QUEUE, durable=True, arguments=turns_queue_arguments(self.queue_max_length)
        )
        await self._queue.bind(exchange, DONE_BINDING)
        # A durable queue keeps its bindings: one declared before bound every `done`.
        # Unbinding a binding that does not exist is no error.
        await self._queue.unbind(exchange, LEGACY_DONE_BINDING)
        self._tag = await self._queue.consume(self.on_message)
        self.consuming = True
        log.info("consuming turns", queue=TURNS_QUEUE, prefetch=self.prefetch)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking events, let the writes under way finish (within `grace_s`), and close;
        whatever is still unacked then goes back to the queue."""
        self.consuming = False
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # Everything up to `hold()` is synchronous, so sessions are queued in delivery order.
        try:
            done = Done.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("unreadable done event dropped", error_count=exc.error_count())
            metrics.TURNS_WRITTEN.labels("invalid").inc()
            await _settle(message, ack=True)
            return
        if not done.session_id:
            await _settle(message, ack=True)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            async with self._locks.hold(done.session_id):
                with (
                    structlog.contextvars.bound_contextvars(
                        request_id=done.request_id, session_id=done.session_id
                    ),
                    tracer().start_as_current_span(
                        "session-store write turn", context=extract_context(message.headers)
                    ),
                ):
                    await self._write(message, done)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _write(self, message: AbstractIncomingMessage, done: Done) -> None:
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        # A `done` delivered for the first time is not looked up before it is written (a read
        # per turn): only a redelivery, or a retry after an error that may have come after the
        # insert, can find its turn already there (the insert refuses a duplicate anyway).
        look_first = bool(message.redelivered)
        while True:
            try:
                outcome = await self.service.store_turn(done, look_first=look_first)
            except PERMANENT_ERRORS as exc:
                log.error("turn cannot be stored; dropped", error=type(exc).__name__)
                metrics.TURNS_WRITTEN.labels("invalid").inc()
                await _settle(message, ack=True)
                return
            except PyMongoError as exc:
                metrics.TURN_WRITE_ERRORS.inc()
                self._database(False)
                if time.monotonic() + delay > deadline:
                    log.warning("turn not written; back to the queue", error=str(exc))
                    await _settle(message, ack=False)
                    return
                log.info("turn write failed; retrying", error=str(exc), retry_in_s=delay)
                look_first = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                # A bug, not the database: retrying would block the session for good.
                log.exception("turn write failed unexpectedly; dropped")
                metrics.TURNS_WRITTEN.labels("invalid").inc()
                await _settle(message, ack=True)
                return
            self._database(True)
            metrics.TURNS_WRITTEN.labels(str(outcome)).inc()
            if outcome is WriteOutcome.REJECTED:
                log.warning("turn for a session of another owner (or of none) dropped")
            elif outcome is WriteOutcome.DELETED:
                log.info("turn asked before its session was deleted; dropped", model=done.model)
            else:
                log.debug("turn handled", outcome=str(outcome), model=done.model)
            await _settle(message, ack=True)
            await self._announce(done, str(outcome))
            return

    async def _announce(self, done: Done, outcome: str) -> None:
        """Tell the request's gateway its turn is written (best-effort: it waits a bounded
        time for this before finishing the response)."""
        if not done.gateway_id:
            return
        stored = Stored(request_id=done.request_id, outcome=outcome)
        key = event_key(done.gateway_id, done.request_id, stored.kind)
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.publish_event(key, encode(stored), durable=False)

    def _database(self, ok: bool) -> None:
        if self._on_database is not None:
            self._on_database(ok)


async def _settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
    """Ack, or nack with requeue. If the channel is gone the broker redelivers the message,
    which idempotent writes make harmless."""
    try:
        if ack:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except Exception as exc:
        log.info("could not settle a turn event; it will be redelivered", error=str(exc))
