"""Periodic backend probe and status broadcast, so gateways answer /health and /api/version
without ever calling the backend themselves."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel

from corral_common.broker import Broker, BrokerUnavailable, encode
from corral_common.errors import CorralError
from corral_common.messages import (
    BackendStatus,
    Job,
    LaneEntry,
    LaneHealth,
    QueueStatus,
    SchedulerStatus,
)
from corral_common.redaction import redact_url
from corral_common.timeouts import within
from corral_common.topology import JOBS_QUEUE, STATUS_ROUTING_KEY
from corral_scheduler.backends.base import Backend
from corral_scheduler.lane import Lane, Placed

log = structlog.get_logger(__name__)

# Jobs listed in each status broadcast (the running one and the next ones), for ops and
# GET /queue/{id}; beyond this the lane is only counted.
LANE_LISTED = 200


class StatusReporter:
    def __init__(
        self,
        scheduler_id: str,
        broker: Broker,
        backend: Backend,
        lane: Lane,
        interval_s: float,
        health: Callable[[], LaneHealth] = LaneHealth,
    ) -> None:
        self.scheduler_id = scheduler_id
        # The watchdog's verdict on the lane (watchdog.py), carried in every broadcast.
        self.health = health
        self.broker = broker
        self.backend = backend
        self.lane = lane
        self.interval_s = interval_s
        self.last: SchedulerStatus | None = None
        self._probe_channel: AbstractChannel | None = None

    async def run_forever(self) -> None:
        while True:
            self.last = await self.snapshot()
            with contextlib.suppress(BrokerUnavailable):
                await self.broker.publish_event(
                    STATUS_ROUTING_KEY, encode(self.last), durable=False
                )
            requested = self.lane.status_requested
            with contextlib.suppress(TimeoutError):
                await within(requested.wait(), self.interval_s)
            requested.clear()

    async def snapshot(self) -> SchedulerStatus:
        backend = await self._probe_backend()
        lane = self.lane
        placed = lane.snapshot()
        waits = [p.wait_ms for p in placed]
        return SchedulerStatus(
            scheduler_id=self.scheduler_id,
            sent_at=time.time(),
            backend=backend,
            queue=QueueStatus(
                waiting=len(lane) + await self._backlog(),
                running=1 if lane.running is not None else 0,
                average_wait_ms=round(sum(waits) / len(waits)) if waits else 0,
                processing_rate=round(lane.processing_rate(), 3),
            ),
            models=lane.model_activity(),
            lane=self._lane(placed),
            paused=lane.paused,
            draining=lane.draining,
            health=self.health(),
        )

    def _lane(self, placed: list[Placed]) -> list[LaneEntry]:
        running = self.lane.running
        now = time.time()
        listed: list[tuple[Job, int, int]] = []
        if running is not None:
            listed.append((running.entry.job, 0, 0))
        for one in placed:
            if len(listed) >= LANE_LISTED:
                break
            listed.append((one.entry.job, one.position, one.wait_ms))
        return [
            LaneEntry(
                request_id=job.request_id,
                kind=job.kind,
                model=job.model,
                position=position,
                estimated_wait_ms=wait_ms,
                waited_ms=round((now - job.enqueued_at) * 1000),
                priority=job.priority,
                client_key=job.client_key,
                owner=job.owner,
            )
            for job, position, wait_ms in listed
        ]

    async def _probe_backend(self) -> BackendStatus:
        # Broadcast to every gateway and shown in /health: never with its credentials.
        url = redact_url(self.backend.base_url)
        try:
            version = await self.backend.version()
        except CorralError as exc:
            return BackendStatus(url=url, connected=False, error=str(exc.details.get("error")))
        return BackendStatus(
            url=url, connected=True, version=version, loaded_model=self.lane.loaded_model()
        )

    async def _backlog(self) -> int:
        """Jobs still in RabbitMQ beyond the admission window (ready, not yet delivered)."""
        try:
            if self._probe_channel is None or self._probe_channel.is_closed:
                self._probe_channel = await self.broker.channel()
            queue = await self._probe_channel.declare_queue(JOBS_QUEUE, passive=True)
        except Exception as exc:
            log.debug("backlog probe failed", error=str(exc))
            self._probe_channel = None
            return 0
        result = queue.declaration_result
        return int(result.message_count or 0)
