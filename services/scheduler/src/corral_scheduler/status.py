"""Periodic backend probe and status broadcast, so gateways answer /health and /api/version
without ever calling the backend themselves. With a pool, every server is probed and shown
(`SchedulerStatus.servers`), and each server's model list is refreshed now and then, so the
lane sends a model only to the servers that have it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

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
    ServerStatus,
)
from corral_common.redaction import redact_url
from corral_common.timeouts import within
from corral_common.topology import DLQ_QUEUE, JOBS_QUEUE, STATUS_ROUTING_KEY
from corral_scheduler import metrics
from corral_scheduler.backends.base import Backend
from corral_scheduler.lane import Lane, Placed, Server

log = structlog.get_logger(__name__)

# Jobs listed in each status broadcast (the running one and the next ones), for ops and
# GET /queue/{id}; beyond this the lane is only counted.
LANE_LISTED = 200
# How often a pool server's model list is read again (a one-server lane never reads it: there
# is nowhere else to send a model).
MODEL_LIST_REFRESH_S = 10.0


class StatusReporter:
    def __init__(
        self,
        scheduler_id: str,
        broker: Broker,
        backends: Mapping[str, Backend],
        lane: Lane,
        interval_s: float,
        health: Callable[[], LaneHealth] = LaneHealth,
        max_queued_per_key: int | None = None,
    ) -> None:
        self.scheduler_id = scheduler_id
        # The per-caller cap, told to the gateways so they refuse at the edge (queue_caps.py).
        self.max_queued_per_key = max_queued_per_key
        # The watchdog's verdict on the lane (watchdog.py), carried in every broadcast.
        self.health = health
        self.broker = broker
        self.backends = backends
        self.lane = lane
        # When each server's model list was last read (monotonic).
        self._listed_at: dict[str, float] = {}
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
        servers = await asyncio.gather(
            *(self._probe(server) for server in self.lane.servers.values())
        )
        lane = self.lane
        placed = lane.snapshot()
        waits = [p.wait_ms for p in placed]
        return SchedulerStatus(
            scheduler_id=self.scheduler_id,
            sent_at=time.time(),
            backend=_as_one(servers),
            servers=servers,
            queue=QueueStatus(
                waiting=len(lane) + await self._backlog(),
                running=len(lane.running_jobs()),
                average_wait_ms=round(sum(waits) / len(waits)) if waits else 0,
                processing_rate=round(lane.processing_rate(), 3),
                max_queued_per_key=self.max_queued_per_key,
            ),
            models=lane.model_activity(),
            lane=self._lane(placed),
            paused=lane.paused,
            draining=lane.draining,
            health=self.health(),
        )

    def _lane(self, placed: list[Placed]) -> list[LaneEntry]:
        now = time.time()
        listed: list[tuple[Job, int, int, str | None]] = [
            (running.entry.job, 0, 0, running.server.name) for running in self.lane.running_jobs()
        ]
        for one in placed:
            if len(listed) >= LANE_LISTED:
                break
            listed.append((one.entry.job, one.position, one.wait_ms, None))
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
                server=server,
            )
            for job, position, wait_ms, server in listed
        ]

    async def _probe(self, server: Server) -> ServerStatus:
        backend = self.backends[server.name]
        state = {
            "name": server.name,
            "kind": backend.kind,
            # Broadcast to every gateway and shown in /health: never with its credentials.
            "url": redact_url(backend.base_url),
            "in_rotation": server.in_rotation,
            "running": server.running.entry.request_id if server.running else None,
            "loaded_model": server.loaded,
            "jobs_done": server.jobs_done,
            "swaps": server.swaps,
        }
        try:
            version = await backend.version()
            if len(self.lane.servers) > 1:
                await self._refresh_models(server, backend)
        except CorralError as exc:
            metrics.SERVER_UP.labels(server.name).set(0)
            return ServerStatus(**state, connected=False, error=str(exc.details.get("error")))
        metrics.SERVER_UP.labels(server.name).set(1)
        return ServerStatus(**state, connected=True, version=version)

    async def _refresh_models(self, server: Server, backend: Backend) -> None:
        now = time.monotonic()
        if now - self._listed_at.get(server.name, -MODEL_LIST_REFRESH_S) < MODEL_LIST_REFRESH_S:
            return
        self._listed_at[server.name] = now
        models = await backend.list_models()
        self.lane.set_models(server, [str(m.get("name") or m.get("model")) for m in models])

    async def _backlog(self) -> int:
        """Jobs still in RabbitMQ beyond the admission window (ready, not yet delivered); the
        dead-letter queue's depth is read on the way, for the `corral_dead_letter_queue_messages`
        gauge (ops alert on it)."""
        backlog = await self._depth(JOBS_QUEUE)
        dead = await self._depth(DLQ_QUEUE)
        if dead is not None:
            metrics.DLQ_MESSAGES.set(dead)
        return backlog or 0

    async def _depth(self, name: str) -> int | None:
        try:
            if self._probe_channel is None or self._probe_channel.is_closed:
                self._probe_channel = await self.broker.channel()
            queue = await self._probe_channel.declare_queue(name, passive=True)
            # Declared again each time: a robust channel hands back the queue it declared
            # passively before, with the message count of that first declaration.
            result = await queue.declare()
        except Exception as exc:
            log.debug("queue depth probe failed", queue=name, error=str(exc))
            self._probe_channel = None
            return None
        return int(result.message_count or 0)


def _as_one(servers: list[ServerStatus]) -> BackendStatus:
    """The pool as one backend, for readers that know only one: connected when any server
    is, described by the first that is (else the first)."""
    first = next((s for s in servers if s.connected), servers[0])
    return BackendStatus(
        url=first.url,
        connected=first.connected,
        version=first.version,
        error=first.error,
        loaded_model=first.loaded_model,
    )
