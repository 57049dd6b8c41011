"""Publishing a job's events to the gateway that holds its client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from corral_common.broker import Broker, BrokerUnavailable, Unroutable, encode
from corral_common.messages import FINAL_KINDS, Job, JobEvent, Position, Positions
from corral_common.topology import event_key, positions_key

log = structlog.get_logger(__name__)


class EventSink:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def send(self, job: Job, event: JobEvent) -> None:
        """Final events are durable and confirmed (the session store relies on `done`); the
        rest are transient and best-effort."""
        kind = str(event.kind)
        key = event_key(job.gateway_id, job.request_id, kind)
        try:
            await self._broker.publish_event(key, encode(event), durable=kind in FINAL_KINDS)
        except Unroutable:
            # Nobody is listening for this request any more (its gateway went away); the job's
            # outcome stands, there is just no one to tell.
            log.info("event had no listener", kind=kind)

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


class TokenBatcher:
    """Forwards chunks as they arrive, coalescing whatever piles up while a publish is under way.

    An idle lane therefore adds no latency to the first token, and a fast backend does not turn
    into one broker message per token.
    """

    def __init__(self, publish: Callable[[int, list[dict[str, Any]]], Awaitable[None]]) -> None:
        self._publish = publish
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._sent = 0
        self._task = asyncio.create_task(self._pump(), name="token-batcher")

    def add(self, chunk: dict[str, Any]) -> None:
        self._pending.append(chunk)
        self._wake.set()

    async def close(self) -> int:
        """Flush and stop; returns how many batches were published."""
        self._closing = True
        self._wake.set()
        await self._task
        return self._sent

    async def abort(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._publish(self._sent, batch)
                self._sent += 1
            if self._closing:
                return
