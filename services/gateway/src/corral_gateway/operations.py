"""Following a model operation the model manager runs (pull, create): its status lines come back
as `progress` events on a listen-only `JobTicket` (the operation is not in the lane and belongs
to the model manager, so a client that leaves cancels nothing)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from corral_common.errors import CorralError
from corral_common.messages import Failed, Progress
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.state import Gateway
from corral_gateway.ticket import JobTicket, broker_lost_error, failure_error

MODEL_MANAGER = "model-manager"


async def operation_lines(
    gateway: Gateway, method: str, params: dict[str, Any], request_id: str
) -> AsyncGenerator[Progress | CorralError, None]:
    """Start (or join) the operation and yield its status lines, then possibly one error."""
    async with JobTicket(gateway, request_id) as ticket:
        await gateway.rpc.call(
            MODEL_MANAGER,
            method,
            request_id=request_id,
            gateway_id=gateway.settings.instance_id,
            **params,
        )
        while True:
            event: Delivery = await ticket.events.get()
            match event:
                case Progress():
                    yield event
                    if event.final:
                        return
                case Failed():
                    yield failure_error(event)
                    return
                case BrokerLost():
                    yield broker_lost_error()
                    return
