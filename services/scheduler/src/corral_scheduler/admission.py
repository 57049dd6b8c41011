"""Consumer callbacks: admission of jobs into the lane, and control messages (cancel).

The jobs callback only admits: it never waits for the backend, so the prefetch window fills
with queued work the scheduler can order and report positions for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import OrderedDict

import structlog
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType, in_flight_error
from corral_common.ids import EVENT_KIND_MAX_CHARS, ROUTING_KEY_MAX_BYTES
from corral_common.messages import (
    Accepted,
    Cancelled,
    CancelRequest,
    Failed,
    Job,
    LaneCommand,
    Position,
)
from corral_common.queue_caps import cap_of, over_cap
from corral_common.topology import LANE_COMMAND_KEY, STATUS_REQUEST_KEY, event_key
from corral_scheduler import metrics
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink
from corral_scheduler.executor import queue_timeout, start_by
from corral_scheduler.lane import Entry, Lane

log = structlog.get_logger(__name__)


class RecentCancels:
    """Cancels for jobs not admitted yet (beyond the window, or mid-failover): honoured when
    the job shows up. Bounded, oldest forgotten first."""

    def __init__(self, limit: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def take(self, request_id: str) -> bool:
        if request_id not in self._ids:
            return False
        del self._ids[request_id]
        return True


def events_routable(job: Job) -> bool:
    """Whether every event of this job has a routing key RabbitMQ accepts (at most 255 bytes)."""
    longest = event_key(job.gateway_id, job.request_id, "k" * EVENT_KIND_MAX_CHARS)
    return len(longest.encode()) <= ROUTING_KEY_MAX_BYTES


class DeliveryTurns:
    """Deliveries enter the lane in the order they arrived. A redelivered job awaits a publish
    (is its client still there?) before it is pushed, and those publishes may be confirmed in
    any order: after a failover the lane, free at once, would start whichever job's confirm
    came first, not the oldest. So a delivery is pushed only once every earlier one has been
    pushed or turned away. A fresh job behind no pending one goes straight in."""

    def __init__(self) -> None:
        # Arrivals not yet pushed or turned away, oldest first; a waiter's future when it waits.
        self._pending: dict[int, asyncio.Future[None] | None] = {}
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        """Deliveries being admitted."""
        return len(self._pending)

    def arrive(self) -> int:
        arrival = next(self._arrivals)
        self._pending[arrival] = None
        return arrival

    async def turn(self, arrival: int) -> None:
        """Return once every delivery that arrived before `arrival` is settled."""
        if next(iter(self._pending)) == arrival:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pending[arrival] = waiter
        await waiter

    def settle(self, arrival: int) -> None:
        """`arrival` is pushed or turned away (idempotent): the next one may go in."""
        if arrival not in self._pending:
            return
        del self._pending[arrival]
        head = next(iter(self._pending.values()), None)
        if head is not None and not head.done():
            head.set_result(None)


async def _dead_letter(message: AbstractIncomingMessage, reason: str) -> None:
    metrics.JOBS_DEAD_LETTERED.labels(reason).inc()
    with contextlib.suppress(Exception):  # the channel died: the broker redelivers it anyway
        await message.reject(requeue=False)


class Admission:
    def __init__(
        self,
        scheduler_id: str,
        lane: Lane,
        sink: EventSink,
        speeds: SpeedBook,
        max_queued_per_key: int = 0,
    ) -> None:
        self.scheduler_id = scheduler_id
        self.max_queued_per_key = max_queued_per_key
        self.lane = lane
        self.sink = sink
        self.speeds = speeds
        self.cancels = RecentCancels()
        self.turns = DeliveryTurns()

    async def on_job(self, message: AbstractIncomingMessage) -> None:
        # Taken before the first await: deliveries are handled concurrently, and a redelivered
        # job awaits a publish before it is pushed (DeliveryTurns keeps the push order).
        arrival = self.turns.arrive()
        try:
            await self._admit(message, arrival)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not admitted (an admitted job is the executor's from then on): dead-letter it, so
            # it neither sits unacked in the window nor comes back forever, and its gateway
            # learns of it from the dead-letter path.
            log.exception("admitting a job failed; dead-lettered")
            await _dead_letter(message, "admission_failed")
        finally:
            self.turns.settle(arrival)

    async def _admit(self, message: AbstractIncomingMessage, arrival: int) -> None:
        # A job turned away settles its turn before it awaits anything, so the deliveries
        # behind it need not wait for its refusal to be published.
        try:
            job = Job.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("unreadable job dead-lettered", error=str(exc).splitlines()[0])
            self.turns.settle(arrival)
            await _dead_letter(message, "unreadable")
            return
        if not events_routable(job):
            # Its events could not be published (RabbitMQ refuses routing keys over 255
            # bytes), so its client could never be told anything: refuse it before it runs.
            # The gateway validates ids at the edge; this is the lane's own guard.
            log.error(
                "job whose events cannot be routed dead-lettered",
                request_id=clip(job.request_id),
                gateway_id=clip(job.gateway_id),
            )
            self.turns.settle(arrival)
            await _dead_letter(message, "unroutable")
            return
        if self.cancels.take(job.request_id):
            metrics.CANCELLATIONS.labels("admission").inc()
            self.turns.settle(arrival)
            await self.sink.send_quietly(
                job, Cancelled(request_id=job.request_id, stage="admission")
            )
            await message.ack()
            return
        refusal = self._refusal(job, redelivered=bool(message.redelivered))
        if refusal is not None:
            metrics.JOBS.labels(refusal.error_type).inc()
            self.turns.settle(arrival)
            await self.sink.send_quietly(job, refusal)
            await message.ack()
            return
        accepted = Accepted(request_id=job.request_id, scheduler_id=self.scheduler_id)
        if message.redelivered:
            metrics.JOBS_REDELIVERED.inc()
        if message.redelivered and not await self.sink.reaches_a_listener(job, accepted):
            # Handed out again after a crash or a broker restart, and nobody holds its client
            # any more: running it would generate an answer for no one.
            metrics.CANCELLATIONS.labels("admission").inc()
            log.info("redelivered job has no client; dropped", request_id=job.request_id)
            self.turns.settle(arrival)
            await message.ack()
            return
        await self.turns.turn(arrival)
        entry = Entry(
            job=job,
            delivery=message,
            connection_epoch=self.lane.connection_epoch,
            admitted_at=time.monotonic(),
            arrival=arrival,
            # Its work alone; the load is charged where the lane lays it onto a server that
            # must swap (Lane.snapshot).
            estimate_ms=self.speeds.estimate_ms(
                job.model, job.prompt_chars, job.num_predict, job.model, kind=job.kind
            ),
            load_ms=self.speeds.load_ms(job.model, job.kind),
        )
        self.lane.push(entry)
        self.turns.settle(arrival)
        try:
            await self._announce(entry, accepted, bool(message.redelivered))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The job is in the lane and will run; only its client's news was lost.
            log.exception("announcing an admitted job failed", request_id=clip(job.request_id))
        self.lane.moved.set()

    async def _announce(self, entry: Entry, accepted: Accepted, redelivered: bool) -> None:
        job = entry.job
        if not redelivered:
            await self.sink.send_quietly(job, accepted)
        # The first position goes out now, not at the broadcaster's next round: a job that
        # starts soon must still have been told where it stood before its `started`.
        # Computed after the `accepted` publish: the lane may have moved meanwhile (jobs behind
        # this one admitted, the broadcaster already telling it), so from where it is now.
        placed = self.lane.placement(entry.request_id)
        if not redelivered:
            metrics.FIRST_POSITION.observe(placed.position if placed is not None else 0)
        if placed is not None and placed.position > 0 and entry.last_sent is None:
            position, wait_ms = placed.position, placed.wait_ms
            entry.told(position, wait_ms, time.monotonic())
            await self.sink.send_quietly(
                job,
                Position(request_id=job.request_id, position=position, estimated_wait_ms=wait_ms),
            )

    def _refusal(self, job: Job, *, redelivered: bool = False) -> Failed | None:
        """A job the lane will not take: already past its deadline, one whose request id
        another job holds in the lane, or one more than its caller may have queued
        (`Job.max_queued` when its key sets one, else `max_queued_per_key`)."""
        if not redelivered and (
            job.request_id in self.lane or self.lane.running_job(job.request_id) is not None
        ):
            # Two gateways' requests with one X-Request-Id (each gateway refuses its own
            # duplicates): the lane holds jobs by id, and the second would take the first's
            # place, leaving its client waiting for a job that is gone.
            return _failed(job, in_flight_error(job.request_id))
        deadline = start_by(job)
        if deadline is not None and time.time() >= deadline:
            return queue_timeout(job)
        if self.lane.draining:
            return Failed(
                request_id=job.request_id,
                status=503,
                error_type=str(ErrorType.QUEUE_FULL),
                message="Corral is draining its queue for maintenance; please retry shortly",
                details={"retry_after_s": 30},
            )
        # The caller's key may carry its own cap; else the scheduler's default. 0: no cap.
        cap = cap_of(job.max_queued, self.max_queued_per_key)
        if cap > 0 and job.client_key:
            queued = self.lane.queued_for(job.client_key)
            if queued >= cap:
                return _failed(job, over_cap(queued, cap, self._retry_after_s(job.client_key)))
        return None

    def _retry_after_s(self, key: str) -> int:
        """When the caller's first queued job should have finished, freeing a place."""
        placed = self.lane.snapshot()
        first = next((p for p in placed if p.entry.job.client_key == key), None)
        if first is not None:
            ahead_ms = first.wait_ms + first.entry.estimate_ms
        elif placed:
            ahead_ms = placed[-1].wait_ms + placed[-1].entry.estimate_ms
        else:
            ahead_ms = min((self.lane.remaining_ms(r) for r in self.lane.running_jobs()), default=0)
        return max(1, math.ceil(ahead_ms / 1000))

    async def on_control(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            if message.routing_key == STATUS_REQUEST_KEY:
                self.lane.status_requested.set()
                return
            if message.routing_key == LANE_COMMAND_KEY:
                self._command(message.body)
                return
            if not message.routing_key or not message.routing_key.startswith("cancel."):
                return
            try:
                request = CancelRequest.model_validate_json(message.body)
            except ValidationError:
                return
            await self.cancel(request.request_id, request.reason)

    def _command(self, body: bytes) -> None:
        try:
            command = LaneCommand.model_validate_json(body)
        except ValidationError:
            log.warning("unreadable lane command dropped")
            return
        log.info("lane command", action=command.action)
        if command.action == "pause":
            self.lane.pause()
        elif command.action == "drain":
            self.lane.drain()
        else:
            self.lane.resume()
        metrics.LANE_STATE.labels("paused").set(int(self.lane.paused))
        metrics.LANE_STATE.labels("draining").set(int(self.lane.draining))
        self.lane.status_requested.set()

    async def cancel(self, request_id: str, reason: str) -> str:
        """Returns the stage the job was cancelled at, or "unknown" when it is not held here."""
        entry = self.lane.remove(request_id)
        if entry is not None:
            metrics.CANCELLATIONS.labels("queued").inc()
            log.info("queued job cancelled", request_id=request_id, reason=reason)
            await self.sink.send_quietly(
                entry.job, Cancelled(request_id=request_id, stage="queued")
            )
            if not self.lane.is_stale(entry):
                await entry.delivery.ack()
            self.lane.moved.set()
            return "queued"
        if self.lane.cancel_running(request_id, reason):
            return "running"
        log.info("cancel for a job not held here; remembered", request_id=request_id)
        self.cancels.add(request_id)
        return "unknown"

    def connection_lost(self) -> None:
        """Unacked deliveries return to the queue when the connection drops: forget them here,
        and stop the running job, whose events and ack can no longer be delivered."""
        running = self.lane.running_jobs()
        dropped = self.lane.new_connection_epoch()
        if dropped or running:
            log.warning("dropped admitted jobs after broker loss", jobs=len(dropped))


def _failed(job: Job, error: CorralError) -> Failed:
    """A refusal of `job` as the event its client is told."""
    return Failed(
        request_id=job.request_id,
        status=error.status,
        error_type=str(error.error_type),
        message=error.message,
        details=error.details,
    )
