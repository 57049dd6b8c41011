"""`GET /queue/{request_id}`: where a request stands in the lane, for anyone who knows its id.
Corral-shaped answers and errors."""

from __future__ import annotations

from aiohttp import web

from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id
from corral_gateway.extensions import invalid_id_error
from corral_gateway.lane_status import find_entry, fresh_statuses
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY


async def where(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        request_id = check_client_id(request.match_info["request_id"], "request_id")
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc
    relay = gateway.relays.get(request_id)
    spot = relay.where if relay is not None else None
    if spot is None:
        entry = find_entry(await fresh_statuses(gateway), request_id)
        spot = (entry.position, entry.estimated_wait_ms) if entry is not None else None
    if spot is None:
        raise CorralError(
            ErrorType.REQUEST_NOT_FOUND,
            f"request '{request_id}' is not queued or running",
            details={"request_id": request_id},
        )
    position, wait_ms = spot
    return json_response(
        {
            "request_id": request_id,
            "state": "running" if position == 0 else "queued",
            "position": position,
            "estimated_wait_ms": wait_ms,
        },
        200,
        {"X-Queue-Position": str(position), "X-Estimated-Wait-Ms": str(wait_ms)},
    )
