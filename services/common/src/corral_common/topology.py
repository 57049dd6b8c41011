"""The broker topology (ARCHITECTURE.md section 2), declared idempotently by every service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from corral_common.settings import CorralSettings

JOBS_EXCHANGE = "corral.jobs"
JOBS_QUEUE = "scheduler.jobs"
JOBS_ROUTING_KEY = "job"
EVENTS_EXCHANGE = "corral.events"
CONTROL_EXCHANGE = "corral.control"
DLX_EXCHANGE = "corral.dlx"
DLQ_QUEUE = "scheduler.jobs.dlq"
STATUS_ROUTING_KEY = "status.scheduler"
STORE_STATUS_ROUTING_KEY = "status.session-store"
MODELS_ROUTING_KEY = "models.list"


def event_key(gateway_id: str, request_id: str, kind: str) -> str:
    """Where a job's events go. `gateway_id` names whoever submitted the job and listens on
    `gw.<id>.#`: a gateway, or the model manager for the unloads it decides on."""
    return f"gw.{gateway_id}.{request_id}.{kind}"


# A `done` that finishes a turn of a session (`Done.session_id` set) is routed with this word in
# the place of its kind, `gw.<id>.<request id>.turn`: the session store's durable queue binds
# only that (TURNS_BINDING), so the `done` of a chat without a session goes to its gateway
# alone, never through the store's quorum queue (a disk write, a quorum confirm and a delivery
# for nothing). The gateway binds `gw.<id>.#` and reads an event's kind from its body, so it
# gets both alike.
TURN_ROUTE = "turn"
TURNS_BINDING = f"gw.*.*.{TURN_ROUTE}"
# What the store's queue was bound with before: every `done`. Unbound at start.
LEGACY_DONE_BINDING = "gw.*.*.done"


def event_route(kind: str, session_id: str | None = None) -> str:
    """The last word of an event's routing key: its kind, but `turn` for a `done` with a
    session (TURN_ROUTE)."""
    return TURN_ROUTE if kind == "done" and session_id else kind


def positions_key(gateway_id: str) -> str:
    """Where the lane's position updates for one gateway's jobs go (`Positions`). In the place
    of a request id it has `_lane`, and no job event has the kind `positions`, so it is never
    the key of a job's own event."""
    return f"gw.{gateway_id}._lane.positions"


def gateway_queue_name(gateway_id: str) -> str:
    return f"gateway.{gateway_id}"


# A gateway that starts up asks on `corral.control` for every scheduler's status at once,
# instead of reporting itself degraded until the next periodic broadcast.
STATUS_REQUEST_KEY = "status.request"


# Operators' pause / resume / drain, to every scheduler (each has its own control queue).
LANE_COMMAND_KEY = "admin.lane"


def cancel_key(request_id: str) -> str:
    return f"cancel.{request_id}"


def jobs_queue_arguments(settings: CorralSettings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        # One active scheduler in the cluster, the rest hot standbys that inherit unacked jobs
        # in order when it dies.
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": DLX_EXCHANGE,
        "x-delivery-limit": settings.job_delivery_limit,
        "x-max-length": settings.queue_max_length,
        # A full queue nacks the publish, which the gateway turns into 503 + Retry-After.
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True)
class Topology:
    jobs: AbstractExchange
    events: AbstractExchange
    control: AbstractExchange
    jobs_queue: AbstractQueue


async def declare_topology(channel: AbstractChannel, settings: CorralSettings) -> Topology:
    dlx = await channel.declare_exchange(DLX_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(DLQ_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx)
    jobs = await channel.declare_exchange(JOBS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    jobs_queue = await channel.declare_queue(
        JOBS_QUEUE, durable=True, arguments=jobs_queue_arguments(settings)
    )
    await jobs_queue.bind(jobs, JOBS_ROUTING_KEY)
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    control = await channel.declare_exchange(
        CONTROL_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    return Topology(jobs=jobs, events=events, control=control, jobs_queue=jobs_queue)
