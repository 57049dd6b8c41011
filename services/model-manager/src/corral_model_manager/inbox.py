"""The manager's own event queue: answers to the jobs it submits, scheduler status broadcasts,
and gateways asking (on start) for everything broadcast, the model list included.

Like a gateway's, the queue is exclusive and auto-delete, so it and its bindings vanish with
this replica; `gw.<instance_id>.#` brings the scheduler's events for our jobs.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from corral_common.broker import Broker
from corral_common.messages import EVENT_ADAPTER, Event, Failed
from corral_common.status_board import StatusBoard
from corral_common.topology import (
    CONTROL_EXCHANGE,
    EVENTS_EXCHANGE,
    STATUS_REQUEST_KEY,
    STATUS_ROUTING_KEY,
)
from corral_model_manager.jobs import JobSubmitter, PendingJob

log = structlog.get_logger(__name__)

PREFETCH = 100


def inbox_queue_name(instance_id: str) -> str:
    return f"model-manager.{instance_id}"


class Inbox:
    def __init__(
        self,
        board: StatusBoard,
        submitter: JobSubmitter,
        on_answer: Callable[[PendingJob, Event], None],
        on_status_request: Callable[[], None],
    ) -> None:
        self._board = board
        self._submitter = submitter
        self._on_answer = on_answer
        self._on_status_request = on_status_request

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        if message.exchange == CONTROL_EXCHANGE:
            if message.routing_key == STATUS_REQUEST_KEY:
                self._on_status_request()
            return
        if message.routing_key == STATUS_ROUTING_KEY:
            self._board.take(message.body)
            return
        try:
            event = EVENT_ADAPTER.validate_json(message.body)
        except ValidationError:
            log.warning("unreadable event dropped", routing_key=message.routing_key)
            return
        pending = self._submitter.answered(event)
        if pending is not None:
            self._on_answer(pending, event)

    def dead_letter(self, failed: Failed) -> bool:
        """One of our jobs was dead-lettered: its failure is its answer."""
        pending = self._submitter.answered(failed)
        if pending is None:
            return False
        self._on_answer(pending, failed)
        return True


async def open_inbox(broker: Broker, instance_id: str, inbox: Inbox) -> AbstractChannel:
    """Declare, bind and consume the queue; the returned channel closes it."""
    channel = await broker.channel(prefetch=PREFETCH)
    queue = await channel.declare_queue(
        inbox_queue_name(instance_id), exclusive=True, auto_delete=True
    )
    events = await channel.get_exchange(EVENTS_EXCHANGE)
    control = await channel.get_exchange(CONTROL_EXCHANGE)
    await queue.bind(events, f"gw.{instance_id}.#")
    await queue.bind(events, STATUS_ROUTING_KEY)
    await queue.bind(control, STATUS_REQUEST_KEY)
    await queue.consume(inbox.on_message, no_ack=True)
    return channel
