"""The lane under `/admin`: the whole queue, cancelling a request, pausing / resuming / draining
the lane and inspecting the dead-letter queue. Corral-shaped answers and errors. Each job is
shown with its `owner` (the principal whose request it is) and `client_key` (its fair-share
key)."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
from aiohttp import web

from corral_common.broker import BrokerUnavailable, encode
from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id
from corral_common.messages import Job, LaneCommand, SchedulerStatus
from corral_common.topology import DLQ_QUEUE, LANE_COMMAND_KEY
from corral_gateway.extensions import invalid_id_error
from corral_gateway.lane_status import find_entry, fresh_statuses
from corral_gateway.query_params import int_query
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY, Gateway

DLQ_PEEK_MAX = 100
# How long a lane command's reply waits for every scheduler to report the commanded state.
LANE_COMMAND_WAIT_S = 2.0
# The lane flags (paused, draining) each command leaves behind.
COMMANDED_STATE: dict[str, tuple[bool, bool]] = {
    "pause": (True, False),
    "resume": (False, False),
    "drain": (False, True),
}


async def listing(request: web.Request) -> web.Response:
    statuses = await fresh_statuses(request.app[GATEWAY])
    entries = sorted((e for s in statuses for e in s.lane), key=lambda e: e.position)
    return json_response(
        {
            "schedulers": [
                {
                    "scheduler_id": s.scheduler_id,
                    "paused": s.paused,
                    "draining": s.draining,
                    "running": s.queue.running,
                    "waiting": s.queue.waiting,
                    # Each backend server its lane drives (one without a pool).
                    "servers": [server.model_dump() for server in s.servers],
                }
                for s in statuses
            ],
            "waiting": sum(s.queue.waiting for s in statuses),
            "queue": [entry.model_dump() for entry in entries],
        },
        200,
    )


async def cancel(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        # The id becomes a routing key (`cancel.<request_id>`): it must follow the id rule.
        request_id = check_client_id(request.match_info["request_id"], "request_id")
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc
    found = (
        request_id in gateway.relays
        or find_entry(await fresh_statuses(gateway), request_id) is not None
    )
    if not gateway.broker.connected:
        raise CorralError(ErrorType.BROKER_UNAVAILABLE, "message broker is unavailable")
    await gateway.submitter.cancel(request_id, "cancelled by an operator")
    return json_response({"request_id": request_id, "cancel_requested": True, "found": found}, 202)


async def command(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    action = request.match_info["action"]
    if action not in COMMANDED_STATE:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"unknown lane action {clip(action)!r}: use pause, resume or drain",
        )
    try:
        await gateway.broker.publish_control(
            LANE_COMMAND_KEY, encode(LaneCommand.model_validate({"action": action}))
        )
    except BrokerUnavailable as exc:
        raise CorralError(ErrorType.BROKER_UNAVAILABLE, str(exc)) from exc
    paused, draining = COMMANDED_STATE[action]
    statuses = await _commanded(gateway, paused, draining)
    return json_response(
        {
            "action": action,
            # What the command sets; each scheduler's own flags say whether it has reported it
            # yet (`applied`), within LANE_COMMAND_WAIT_S.
            "state": {"paused": paused, "draining": draining},
            "schedulers": [
                {
                    "scheduler_id": s.scheduler_id,
                    "paused": s.paused,
                    "draining": s.draining,
                    "applied": (s.paused, s.draining) == (paused, draining),
                }
                for s in statuses
            ],
        },
        202,
    )


async def _commanded(gateway: Gateway, paused: bool, draining: bool) -> list[SchedulerStatus]:
    """The schedulers' statuses once each shows the commanded flags, waiting at most
    LANE_COMMAND_WAIT_S. A scheduler reports its status as soon as it has applied a command, so
    the wait is one broadcast; a status sent before the command would show the old state."""
    deadline = time.monotonic() + LANE_COMMAND_WAIT_S
    statuses = gateway.hub.status.fresh()
    while True:
        if statuses and all((s.paused, s.draining) == (paused, draining) for s in statuses):
            return statuses
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return statuses
        # Returns on the next status sent from now on (or when the time is up).
        statuses = await gateway.hub.status.newer_than(time.time(), remaining)


async def dead_letters(request: web.Request) -> web.Response:
    """The DLQ's depth and its first jobs. Peeking returns each message to the queue (and so
    counts as a delivery of it)."""
    gateway = request.app[GATEWAY]
    limit = int_query(request, "limit", 20, maximum=DLQ_PEEK_MAX)
    try:
        channel = await gateway.broker.channel()
    except BrokerUnavailable as exc:
        raise CorralError(ErrorType.BROKER_UNAVAILABLE, str(exc)) from exc
    async with channel:
        queue = await channel.declare_queue(DLQ_QUEUE, passive=True)
        depth = int(queue.declaration_result.message_count or 0)
        peeked: list[aio_pika.abc.AbstractIncomingMessage] = []
        for _ in range(min(limit, depth)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            peeked.append(message)
        jobs = [_dead_job(message) for message in peeked]
        for message in peeked:
            await message.nack(requeue=True)
    return json_response({"queue": DLQ_QUEUE, "messages": depth, "jobs": jobs}, 200)


def _dead_job(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    deaths = (message.headers or {}).get("x-death")
    reason = None
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = str(deaths[0].get("reason"))
    try:
        job = Job.model_validate_json(message.body)
    except ValueError:
        return {"readable": False, "reason": reason, "bytes": len(message.body)}
    return {
        "readable": True,
        "reason": reason,
        "request_id": job.request_id,
        "kind": job.kind,
        "model": job.model,
        "owner": job.owner,
        "client_key": job.client_key,
        "enqueued_at": job.enqueued_at,
    }
