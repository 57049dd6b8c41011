"""The lane as the schedulers last reported it, fresh enough for queue views (`GET /queue/{id}`)
and the operators' lane endpoints."""

from __future__ import annotations

import time

from corral_common.broker import BrokerUnavailable
from corral_common.messages import LaneEntry, SchedulerStatus
from corral_common.topology import STATUS_REQUEST_KEY
from corral_gateway.state import Gateway

# How long a view waits for the schedulers to report the lane as it is now.
FRESH_STATUS_WAIT_S = 1.0
STATUS_ASK_INTERVAL_S = 0.25


async def fresh_statuses(gateway: Gateway) -> list[SchedulerStatus]:
    """The schedulers' statuses as of now. Requests for a fresh one are shared: at most one
    per STATUS_ASK_INTERVAL_S from this gateway, so clients polling GET /queue/{id} cannot make
    every scheduler broadcast its lane at their pace."""
    now = time.time()
    if now - gateway.status_asked_at >= STATUS_ASK_INTERVAL_S:
        gateway.status_asked_at = now
        try:
            await gateway.broker.publish_control(STATUS_REQUEST_KEY, b"{}")
        except BrokerUnavailable:
            return gateway.hub.status.fresh()
    return await gateway.hub.status.newer_than(gateway.status_asked_at, FRESH_STATUS_WAIT_S)


def find_entry(statuses: list[SchedulerStatus], request_id: str) -> LaneEntry | None:
    for status in statuses:
        for entry in status.lane:
            if entry.request_id == request_id:
                return entry
    return None
