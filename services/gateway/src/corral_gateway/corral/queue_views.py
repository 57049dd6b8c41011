"""`GET /queue/{request_id}`: where a request stands in the lane, for anyone who knows its id.
Corral-shaped answers and errors.

The request's owner (an admin, and everyone with auth off) also gets its model and priority;
anyone else gets only an anonymous position (`request_id`, `state`, `position`,
`estimated_wait_ms`): nothing that names whose it is, its model or its session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id
from corral_common.messages import Priority
from corral_gateway.extensions import invalid_id_error
from corral_gateway.identity.principal import Caller, caller_of
from corral_gateway.lane_status import find_entry, fresh_statuses
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY


@dataclass(frozen=True)
class Spot:
    """A request's place in the lane, and what is known of it."""

    position: int
    estimated_wait_ms: int
    owner: str | None
    model: str | None
    priority: Priority | None

    def shown_to(self, caller: Caller, auth_on: bool) -> dict[str, Any]:
        """The answer's body: anonymous unless `caller` may see the request."""
        shown: dict[str, Any] = {
            "state": "running" if self.position == 0 else "queued",
            "position": self.position,
            "estimated_wait_ms": self.estimated_wait_ms,
        }
        if sees(caller, self.owner, auth_on):
            known = {"model": self.model, "priority": self.priority}
            shown.update({name: value for name, value in known.items() if value is not None})
        return shown


def sees(caller: Caller, owner: str | None, auth_on: bool) -> bool:
    """Whether `caller` may see a request owned by `owner` beyond its place in the lane."""
    if not auth_on or caller.is_admin:
        return True
    return caller.principal is not None and caller.principal == owner


async def where(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        request_id = check_client_id(request.match_info["request_id"], "request_id")
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc
    spot: Spot | None = None
    relay = gateway.relays.get(request_id)
    if relay is not None and relay.where is not None:
        job = relay.job
        spot = Spot(
            *relay.where,
            owner=job.owner if job is not None else None,
            model=job.model if job is not None else None,
            priority=job.priority if job is not None else None,
        )
    else:
        entry = find_entry(await fresh_statuses(gateway), request_id)
        if entry is not None:
            spot = Spot(
                entry.position, entry.estimated_wait_ms, entry.owner, entry.model, entry.priority
            )
    if spot is None:
        raise CorralError(
            ErrorType.REQUEST_NOT_FOUND,
            f"request '{request_id}' is not queued or running",
            details={"request_id": request_id},
        )
    shown = spot.shown_to(caller_of(request), gateway.settings.auth == "on")
    return json_response(
        {"request_id": request_id, **shown},
        200,
        {
            "X-Queue-Position": str(spot.position),
            "X-Estimated-Wait-Ms": str(spot.estimated_wait_ms),
        },
    )
