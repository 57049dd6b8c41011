"""Dead-lettered jobs end their clients' requests at once.

A job the scheduler cannot take (unreadable, refused, handed out more times than the delivery
limit) goes to `corral.dlx` and on to `scheduler.jobs.dlq` for ops; nothing is published on the
job's event route, so its client used to wait until its deadline (600 s, then 408) for an answer
that was never coming.

Every job is published (`publish_job`) with its submitter's id and request id in AMQP headers,
which RabbitMQ keeps when it dead-letters a message (adding `x-death`). Each submitter (a gateway,
or the model manager for its loads and unloads) binds an exclusive, auto-delete queue of its own
to the fanout `corral.dlx` (the DLQ keeps its copy), and turns a dead letter for one of its own
waiting requests into a `Failed` for that request, naming the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from prometheus_client import Counter

from corral_common.broker import Broker, encode
from corral_common.clip import clip
from corral_common.errors import ErrorType
from corral_common.messages import Failed, Job
from corral_common.metric_labels import zeroed
from corral_common.topology import DLX_EXCHANGE, JOBS_ROUTING_KEY

log = structlog.get_logger(__name__)

GATEWAY_ID_HEADER = "x-corral-gateway-id"
REQUEST_ID_HEADER = "x-corral-request-id"

DEAD_LETTERS = zeroed(
    Counter(
        "corral_dead_letters_total",
        "This submitter's own jobs that came back dead-lettered, by RabbitMQ's reason "
        "(delivery_limit, expired, maxlen, rejected)",
        ["reason"],
    ),
    "delivery_limit",
    "expired",
    "maxlen",
    "rejected",
)


def job_headers(job: Job) -> dict[str, Any]:
    """The headers a job is published with, so its dead letter finds its way back."""
    return {GATEWAY_ID_HEADER: job.gateway_id, REQUEST_ID_HEADER: job.request_id}


async def publish_job(broker: Broker, job: Job) -> None:
    """Put a job in the scheduler's lane: persistent, confirmed, with the ids its dead letter
    needs. Raises the broker's refusal (QueueFull, BrokerUnavailable)."""
    await broker.publish_durable(
        broker.topology.jobs, JOBS_ROUTING_KEY, encode(job), headers=job_headers(job)
    )


def dead_letter_queue_name(submitter_id: str) -> str:
    return f"dead-letters.{submitter_id}"


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def death(headers: Mapping[str, Any]) -> tuple[str, int]:
    """Why RabbitMQ dead-lettered the message (from `x-death`) and how many times it was
    delivered before (the quorum queue's `x-delivery-count`, when it is there)."""
    reason: str | None = None
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        reason = _text(deaths[0].get("reason"))
    reason = reason or _text(headers.get("x-first-death-reason")) or "unknown"
    count = headers.get("x-delivery-count")
    return reason, count if isinstance(count, int) else 0


def failure_for(request_id: str, reason: str, deliveries: int) -> Failed:
    """The error a client gets for its dead-lettered job."""
    shown = clip(request_id)
    if reason == "delivery_limit":
        return Failed(
            request_id=request_id,
            status=500,
            error_type=str(ErrorType.INTERNAL_ERROR),
            message=f"request {shown!r} failed: it was handed to a scheduler "
            f"{deliveries or 'too many'} times without finishing and was set aside "
            "(dead-lettered: delivery_limit)",
            details={"dead_letter_reason": reason},
        )
    if reason in ("expired", "maxlen"):
        return Failed(
            request_id=request_id,
            status=503,
            error_type=str(ErrorType.QUEUE_FULL),
            message=f"request {shown!r} was dropped from the queue before it could run "
            f"(dead-lettered: {reason}); please retry shortly",
            details={"dead_letter_reason": reason, "retry_after_s": 5},
        )
    return Failed(
        request_id=request_id,
        status=500,
        error_type=str(ErrorType.INTERNAL_ERROR),
        message=f"request {shown!r} was refused by the scheduler and did not run "
        f"(dead-lettered: {reason})",
        details={"dead_letter_reason": reason},
    )


# Hands a failure to the request it belongs to; False when no such request waits here.
Deliver = Callable[[Failed], bool]


class DeadLetters:
    """Consumes this submitter's copy of every dead letter and fails its own waiting requests."""

    def __init__(self, submitter_id: str, deliver: Deliver) -> None:
        self.submitter_id = submitter_id
        self.deliver = deliver

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        if _text(headers.get(GATEWAY_ID_HEADER)) != self.submitter_id:
            return  # another submitter's job, or not a job at all
        request_id = _text(headers.get(REQUEST_ID_HEADER))
        if request_id is None:
            return
        reason, deliveries = death(headers)
        DEAD_LETTERS.labels(reason).inc()
        failed = failure_for(request_id, reason, deliveries)
        if self.deliver(failed):
            log.warning(
                "job dead-lettered; its request failed", request_id=clip(request_id), reason=reason
            )


async def open_dead_letters(channel: AbstractChannel, submitter_id: str, deliver: Deliver) -> None:
    """Bind this submitter's own dead-letter queue (exclusive: it goes when the process goes)."""
    queue = await channel.declare_queue(
        dead_letter_queue_name(submitter_id), exclusive=True, auto_delete=True
    )
    await queue.bind(await channel.get_exchange(DLX_EXCHANGE))
    await queue.consume(DeadLetters(submitter_id, deliver).on_message, no_ack=True)
