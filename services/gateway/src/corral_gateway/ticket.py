"""Running a job whose answer comes back whole (embeddings, model loads and unloads): submit it,
wait for its final event, and free its place in the lane if the caller leaves first."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import CANCELED_STATUS, Cancelled, Done, Failed, Job
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.state import Gateway

BROKER_LOST_MESSAGE = "lost the connection to Corral's message broker; please retry"


def retry_after_s(gateway: Gateway) -> int:
    """How long until the queue has room again, from the schedulers' own processing rates."""
    statuses = gateway.hub.status.fresh()
    depth = sum(s.queue.waiting + s.queue.running for s in statuses)
    rate = sum(s.queue.processing_rate for s in statuses)
    return math.ceil(depth / rate) if rate > 0 else 10


@asynccontextmanager
async def listening(gateway: Gateway, request_id: str) -> AsyncIterator[asyncio.Queue[Delivery]]:
    """This request's events, registered before anything is published so none is missed."""
    try:
        events = gateway.hub.register(request_id)
    except KeyError as exc:
        raise CorralError(
            ErrorType.INVALID_REQUEST, f"request_id {clip(request_id)!r} is already in flight"
        ) from exc
    try:
        yield events
    finally:
        gateway.hub.unregister(request_id)


async def run_job(gateway: Gateway, job: Job) -> Done:
    """The job's Done; its failure as a CorralError with the status clients expect."""
    async with listening(gateway, job.request_id) as events:
        finished = False
        try:
            # The job may be in the lane before the publish is confirmed: leaving during the
            # confirm must cancel it too. A refusal means it never got there.
            try:
                await gateway.submitter.submit(job, retry_after_s(gateway))
            except CorralError:
                finished = True
                raise
            while True:
                event = await events.get()
                if isinstance(event, Done | Failed | Cancelled | BrokerLost):
                    finished = True
                    break
        finally:
            if not finished:
                # The caller left (or the handler was cancelled): free its place in the lane.
                gateway.spawn(gateway.submitter.cancel(job.request_id, "client disconnected"))
    match event:
        case Done():
            return event
        case Failed():
            raise failure_error(event)
        case Cancelled():
            raise CorralError(ErrorType.INTERRUPTED, "request canceled", status=CANCELED_STATUS)
        case _:
            raise CorralError(
                ErrorType.BROKER_UNAVAILABLE, BROKER_LOST_MESSAGE, headers={"Retry-After": "5"}
            )


def failure_error(failed: Failed) -> CorralError:
    """A `Failed` event as the error it reports, status and type included."""
    try:
        error_type = ErrorType(failed.error_type)
    except ValueError:
        error_type = ErrorType.BACKEND_ERROR
    return CorralError(error_type, failed.message, status=failed.status, details=failed.details)
