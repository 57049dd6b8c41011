"""Following a model operation the model manager runs (pull, create): its status lines come back
as `progress` events on a listen-only `JobTicket` (the operation is not in the lane and belongs
to the model manager, so a client that leaves cancels nothing)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from corral_common.contracts import Method
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    CreateParams,
    OperationParams,
    OperationStarted,
)
from corral_common.errors import CorralError
from corral_common.messages import Failed, Progress
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.state import Gateway
from corral_gateway.ticket import JobTicket, broker_lost_error, failure_error

Start = Callable[[Gateway, str], Awaitable[object]]
"""Asks the model manager to start (or join) an operation whose events go to this gateway
under the request id."""


def model_operation(
    method: Method[OperationParams, OperationStarted], model: str, *, insecure: bool = False
) -> Start:
    """A pull or a push of `model` (`MODEL_MANAGER.pull`, `.push`)."""

    async def start(gateway: Gateway, request_id: str) -> object:
        params = OperationParams(
            model=model,
            insecure=insecure,
            request_id=request_id,
            gateway_id=gateway.settings.instance_id,
        )
        return await gateway.rpc.call(method, params)

    return start


def create_operation(body: dict[str, Any]) -> Start:
    """A create from the client's body (without `stream`)."""

    async def start(gateway: Gateway, request_id: str) -> object:
        params = CreateParams(
            body=body, request_id=request_id, gateway_id=gateway.settings.instance_id
        )
        return await gateway.rpc.call(MODEL_MANAGER.create, params)

    return start


async def operation_lines(
    gateway: Gateway, start: Start, request_id: str
) -> AsyncGenerator[Progress | CorralError, None]:
    """Start (or join) the operation and yield its status lines, then possibly one error."""
    async with JobTicket(gateway, request_id) as ticket:
        await start(gateway, request_id)
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
