"""One job's life at this gateway, for every surface and every job kind: the `JobTicket`.

    async with JobTicket(gateway, request_id) as ticket:   # listening before anything is sent
        await ticket.submit(job)                            # in the lane from here on
        done = await ticket.outcome()                       # or: a Relay reads ticket.events
    # leaving the block: unregistered; if the job may still be in the lane and did not end
    # (the client left, the handler was cancelled, the queue timeout fired), it is cancelled.

It is written once because its race is subtle: the job may be in the lane (even running) before
the broker confirms the publish, so a client leaving during that wait must cancel it too; only a
refusal from the broker says it never got there. A ticket with no `submit` (an operation the
model manager runs, whose lines come back as events) only listens: there is nothing to cancel.

A ticket given its caller's token quota (`identity.quotas`) checks it before a generation is
submitted and charges the generation's `eval_count` when it is done, in the background. A ticket
given the request's own terms (`request_terms.RequestTerms`: its total deadline, its retries)
puts them on the job it submits, so the lane keeps them too.
"""

from __future__ import annotations

import asyncio
import math
import time
from types import TracebackType

import structlog

from corral_common.errors import CorralError, ErrorType, in_flight_error
from corral_common.messages import CANCELED_STATUS, STREAMED_KINDS, Cancelled, Done, Failed, Job
from corral_common.queue_caps import cap_of, over_cap
from corral_common.timeouts import within
from corral_gateway.caller_queues import lane_cap
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.identity.quotas import TokenQuota
from corral_gateway.lane_status import find_entry
from corral_gateway.request_terms import RequestTerms
from corral_gateway.state import Gateway, QueueView
from corral_gateway.usage import final_count, note_done, note_model

log = structlog.get_logger(__name__)

BROKER_LOST_MESSAGE = "lost the connection to Corral's message broker; please retry"


def retry_after_s(gateway: Gateway) -> int:
    """How long until the queue has room again, from the schedulers' own processing rates."""
    statuses = gateway.hub.status.fresh()
    depth = sum(s.queue.waiting + s.queue.running for s in statuses)
    rate = sum(s.queue.processing_rate for s in statuses)
    return math.ceil(depth / rate) if rate > 0 else 10


def failure_error(failed: Failed) -> CorralError:
    """A `Failed` event as the error it reports, status and type included."""
    try:
        error_type = ErrorType(failed.error_type)
    except ValueError:
        error_type = ErrorType.BACKEND_ERROR
    return CorralError(error_type, failed.message, status=failed.status, details=failed.details)


def broker_lost_error() -> CorralError:
    return CorralError(
        ErrorType.BROKER_UNAVAILABLE, BROKER_LOST_MESSAGE, headers={"Retry-After": "5"}
    )


class JobTicket:
    """Listen, submit, read the events, cancel if abandoned, clean up (see the module doc)."""

    def __init__(self, gateway: Gateway, request_id: str, quota: TokenQuota | None = None) -> None:
        self.gateway = gateway
        self.request_id = request_id
        self.quota = quota
        # The request's deadline and retry terms, stamped on the job at `submit` (the relay,
        # which holds the request to the same deadline, hands them over); None: none.
        self.terms: RequestTerms | None = None
        # The job as submitted (whose it is, for the queue view); None before.
        self.job: Job | None = None
        self.events: asyncio.Queue[Delivery] = asyncio.Queue()
        # The job may be in the lane: set before the publish starts, cleared on a refusal.
        self.in_lane = False
        # The job has ended (its final event came, or the answer said it is over): nothing to
        # cancel. Whoever reads the events settles the ticket.
        self.settled = False
        self._view = False
        self._open = False

    def open(self) -> JobTicket:
        """Start listening (entering the ticket does it too); a 409 `request_in_flight` when a
        request of this id is already in flight here."""
        if self._open:
            return self
        # Registered before anything is published, so no event can arrive unclaimed.
        try:
            self.events = self.gateway.hub.register(self.request_id)
        except KeyError as exc:
            raise in_flight_error(self.request_id) from exc
        self._open = True
        return self

    async def __aenter__(self) -> JobTicket:
        return self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.gateway.hub.unregister(self.request_id)
        self.gateway.callers.remove(self.request_id)
        if self._view:
            self.gateway.relays.pop(self.request_id, None)
        if self.in_lane and not self.settled:
            # The client left (or the handler was cancelled, or it timed out in the queue):
            # free its place in the lane. Spawned: this may run inside a cancellation.
            log.info("cancelling the job of a request that ended early")
            self.gateway.spawn(
                self.gateway.submitter.cancel(self.request_id, "client disconnected")
            )

    def show(self, view: QueueView) -> None:
        """Answer GET /queue/{request_id} from `view` while this ticket is open."""
        self.gateway.relays[self.request_id] = view
        self._view = True

    async def submit(self, job: Job) -> None:
        """Put the job in the lane; the broker's refusal as the CorralError clients expect. A
        generation of a caller over its token quota is refused first (429)."""
        if self.quota is not None and job.kind in STREAMED_KINDS:
            await self.quota.check()
        if self.terms is not None:
            job = self.terms.stamp(job)
        self._hold_to_caller_cap(job)
        self.job = job
        note_model(job.model, job.kind)
        self.in_lane = True
        if job.client_key:
            self.gateway.callers.add(job.request_id, job.client_key)
        # Its place in line, told at once when it must wait (places.py): the scheduler tells it
        # only once it admits the job, which may be long after the broker took it. Told
        # before the publish, so it comes before anything the scheduler says.
        places = self.gateway.hub.places
        told = places.place(job.request_id, self.events.put_nowait)
        if (told is not None or places.must_wait(job.request_id)) and self._room(
            told.position if told is not None else 0
        ):
            # It waits anyway (told its place here, or to be placed by the scheduler), and the
            # queue has room: its client hears its place without waiting for the broker's
            # confirm (a quorum queue's disk write, hundreds of ms under load); a refusal that
            # comes after all ends its stream as an error.
            self.gateway.spawn(self._publish_behind(job))
            return
        try:
            await self.gateway.submitter.submit(job, retry_after_s(self.gateway))
        except CorralError:
            places.refused(job.request_id)
            self.gateway.callers.remove(job.request_id)
            self.in_lane = False
            self.job = None
            raise

    def _hold_to_caller_cap(self, job: Job) -> None:
        """A caller already at its queue cap is refused here, before anything is published or
        written to its client (caller_queues.py). Before any scheduler has told its cap, a
        key without its own is left to the lane's check."""
        key = job.client_key
        if not key:
            return
        statuses = self.gateway.hub.status.fresh()
        default = lane_cap(statuses)
        if job.max_queued is None and default is None:
            return
        cap = cap_of(job.max_queued, default or 0)
        callers = self.gateway.callers
        waiting = callers.waiting(key)
        if cap > 0 and waiting >= cap:
            retry = callers.retry_after_s(key, statuses) or retry_after_s(self.gateway)
            raise over_cap(waiting, cap, retry)

    def _room(self, position: int) -> bool:
        """Whether the jobs queue is far from its length limit (`x-max-length`), by the last
        statuses: well below it, a publish is refused only when the broker is gone."""
        statuses = self.gateway.hub.status.fresh()
        waiting = sum(s.queue.waiting for s in statuses)
        return max(waiting, position) < self.gateway.settings.queue_max_length // 2

    async def _publish_behind(self, job: Job) -> None:
        """The publish of a job whose client was already told its place: a refusal becomes
        the request's failure event (a 503 with Retry-After while nothing was written)."""
        try:
            await self.gateway.submitter.submit(job, retry_after_s(self.gateway))
        except CorralError as exc:
            self.gateway.hub.places.refused(job.request_id)
            self.gateway.callers.remove(job.request_id)
            # A nack (the queue full) says it never got there; an unanswered publish may
            # have, and leaving cancels it.
            self.in_lane = exc.error_type is not ErrorType.QUEUE_FULL
            retry = exc.headers.get("Retry-After")
            details = dict(exc.details)
            if retry is not None and retry.isdigit():
                details["retry_after_s"] = int(retry)
            self.events.put_nowait(
                Failed(
                    request_id=job.request_id,
                    status=exc.status,
                    error_type=str(exc.error_type),
                    message=exc.message,
                    details=details,
                )
            )

    def settle(self, done: Done | None = None) -> None:
        """The job is over: leaving now cancels nothing. Given its `done`, the tokens it
        generated are charged to the caller's quota (once, in the background), and what it
        cost is noted for the access log, the usage report and the metrics (usage.py)."""
        if done is not None and not self.settled:
            note_done(done)
            tokens = final_count(done.final, "eval_count")
            if self.quota is not None and tokens:
                self.gateway.spawn(self.quota.charge(tokens))
        self.settled = True

    async def outcome(self, start_by: float | None = None) -> Done:
        """For a job answered whole: its Done; its failure as a CorralError with the status
        clients expect. Other events (accepted, position ...) are passed over.

        Given `start_by` (epoch seconds: its queue timeout, or its total deadline if sooner), a
        job the lane does not report running by then is answered 408 `queue_timeout` at that
        moment, and cancelled on leaving the ticket. The lane checks a job's deadline only when
        its turn comes, which behind a long generation may be many minutes later: its client
        must not wait for that (the relay holds streamed jobs to it the same way)."""
        while True:
            try:
                event = await within(self.events.get(), self._until(start_by))
            except TimeoutError:
                if self._running():
                    # It started in time: the lane holds it to its total deadline from here.
                    start_by = None
                    continue
                raise self._queue_timeout() from None
            match event:
                case Done():
                    self.settle(event)
                    return event
                case Failed():
                    self.settle()
                    raise failure_error(event)
                case Cancelled():
                    self.settle()
                    raise CorralError(
                        ErrorType.INTERRUPTED, "request canceled", status=CANCELED_STATUS
                    )
                case BrokerLost():
                    self.settle()
                    raise broker_lost_error()

    @staticmethod
    def _until(start_by: float | None) -> float | None:
        """Seconds left until `start_by` (None: no limit)."""
        return None if start_by is None else start_by - time.time()

    def _running(self) -> bool:
        """Whether the lane last reported this job running (its position 0). Jobs answered
        whole have no `started` event: the schedulers' statuses are all that says so."""
        entry = find_entry(self.gateway.hub.status.fresh(), self.request_id)
        return entry is not None and entry.position == 0

    def _queue_timeout(self) -> CorralError:
        enqueued_at = self.job.enqueued_at if self.job is not None else time.time()
        waited_s = max(0.0, time.time() - enqueued_at)
        return CorralError(
            ErrorType.QUEUE_TIMEOUT,
            f"request timed out in the queue after {waited_s:.1f} s",
            status=408,
        )


def start_by(job: Job) -> float | None:
    """When the job must have started: its queue deadline, or its total deadline if sooner."""
    deadlines = [d for d in (job.deadline, job.finish_by) if d is not None]
    return min(deadlines) if deadlines else None


async def run_job(gateway: Gateway, job: Job, terms: RequestTerms | None = None) -> Done:
    """Submit a job answered whole (embeddings, loads, unloads) and wait for its answer; given
    the request's `terms`, the job carries its deadline and retries. Not started by its
    deadline, it is answered 408 then and there (`JobTicket.outcome`)."""
    async with JobTicket(gateway, job.request_id) as ticket:
        ticket.terms = terms
        await ticket.submit(job)
        submitted = ticket.job if ticket.job is not None else job
        return await ticket.outcome(start_by(submitted))
