"""Publishing a job, and turning the broker's refusals into the errors clients expect."""

from __future__ import annotations

import contextlib

from corral_common.broker import Broker, BrokerUnavailable, QueueFull, encode
from corral_common.dead_letters import publish_job
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import CancelRequest, Job
from corral_common.topology import cancel_key

# Ollama's own text for a full queue, two spaces included: clients match on it.
QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
BROKER_DOWN_MESSAGE = "Corral's message broker is unavailable; please retry shortly"


class Submitter:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def submit(self, job: Job, retry_after_s: int) -> None:
        try:
            await publish_job(self.broker, job)
        except QueueFull as exc:
            raise CorralError(
                ErrorType.QUEUE_FULL,
                QUEUE_FULL_MESSAGE,
                headers={"Retry-After": str(max(1, retry_after_s))},
            ) from exc
        except BrokerUnavailable as exc:
            raise CorralError(
                ErrorType.BROKER_UNAVAILABLE,
                BROKER_DOWN_MESSAGE,
                details={"error": str(exc)},
                headers={"Retry-After": "5"},
            ) from exc

    async def cancel(self, request_id: str, reason: str) -> None:
        # If the broker is gone the job's delivery dies with the connection anyway.
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.publish_control(
                cancel_key(request_id), encode(CancelRequest(request_id=request_id, reason=reason))
            )
