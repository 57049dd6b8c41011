"""The scheduler's app factory: resources in cleanup_ctx, consumers and the executor as tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from corral_common.broker import Broker
from corral_common.messages import LaneHealth
from corral_common.ops import add_ops_routes
from corral_common.supervision import FAILED_EXIT_CODE, Task, request_exit, stop, supervised
from corral_common.timeouts import within
from corral_common.topology import CONTROL_EXCHANGE, JOBS_QUEUE, STATUS_REQUEST_KEY
from corral_scheduler.admission import Admission
from corral_scheduler.backends import open_backends
from corral_scheduler.backends.base import Backend
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink
from corral_scheduler.executor import Executor
from corral_scheduler.lane import Lane
from corral_scheduler.load_guard import GuardPolicy, LoadGuard, backend_context_lengths
from corral_scheduler.ordering import Ordering, OrderingPolicy
from corral_scheduler.positions import PositionBroadcaster
from corral_scheduler.retries import RetryLimits
from corral_scheduler.settings import SchedulerSettings
from corral_scheduler.status import StatusReporter
from corral_scheduler.watchdog import Watchdog

log = structlog.get_logger(__name__)


@dataclass
class Core:
    executor: Executor
    admission: Admission
    status: StatusReporter
    watchdog: Watchdog


# Each step of a handover is bounded: a stuck lane must not also wedge its own way out.
HANDOVER_STEP_S = 5.0
# If the graceful stop after a handover does not end the process, this does.
HARD_EXIT_AFTER_S = 30.0


SETTINGS = web.AppKey("settings", SchedulerSettings)
BROKER = web.AppKey("broker", Broker)
# Each backend server's client, by the server's name.
BACKENDS: web.AppKey[dict[str, Backend]] = web.AppKey("backends")
CORE = web.AppKey("core", Core)
CONSUMING = web.AppKey("consuming", asyncio.Event)


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = Broker(app[SETTINGS], "scheduler")
    await broker.start()
    app[BROKER] = broker
    yield
    await broker.close()


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # One connection per server is all a serial lane needs (plus its probes); the limit
    # makes that a fact.
    servers = settings.backend_servers()
    connector = aiohttp.TCPConnector(limit=4 * len(servers), limit_per_host=4)
    async with aiohttp.ClientSession(connector=connector) as session:
        app[BACKENDS] = open_backends(settings, session)
        yield


async def lane_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, broker, backends = app[SETTINGS], app[BROKER], app[BACKENDS]
    scheduler_id = settings.instance_id
    speeds = SpeedBook.from_settings(settings)
    lane = Lane(
        Ordering(
            OrderingPolicy(
                fair_share=settings.fair_share,
                aging_s=settings.aging_s,
                group_bound=settings.group_bound,
                pool=settings.pool_policy,
            ),
            time.monotonic,
        ),
        servers=list(backends),
        # The lane re-prices its waiting jobs as the book learns the backends' speeds.
        speeds=speeds,
    )
    sink = EventSink(broker)
    guard = LoadGuard(
        GuardPolicy(
            num_ctx=settings.num_ctx_policy,
            default_num_ctx=settings.default_num_ctx,
            num_ctx_max=settings.num_ctx_max,
            keep_alive_min_s=settings.keep_alive_min_s,
            keep_alive_max_s=settings.keep_alive_max_s,
        ),
        # Models' context lengths, so no client's num_ctx makes the guard keep more.
        backend_context_lengths(backends),
    )
    retry = RetryLimits(
        max_retries=settings.max_retries,
        max_retries_limit=settings.max_retries_limit,
        backoff_s=settings.retry_backoff_s,
        backoff_max_s=settings.retry_backoff_max_s,
    )
    executor = Executor(lane, backends, sink, speeds, guard, settings.takeover_grace_s, retry=retry)
    admission = Admission(scheduler_id, lane, sink, speeds, settings.max_queued_per_key)
    # The executor's supervised task, for the handover to cancel.
    lane_tasks: list[asyncio.Task[None]] = []

    async def hand_over(verdict: LaneHealth) -> None:
        """The watchdog found the lane stuck (watchdog.py): give up the single-active-consumer
        slot, so a standby takes the lane, then exit to be restarted as a fresh standby."""
        app[CONSUMING].clear()
        lane.status_requested.set()  # gateways hear "stuck" at once
        # Should the graceful stop wedge too, the process still goes.
        asyncio.get_running_loop().call_later(HARD_EXIT_AFTER_S, os._exit, FAILED_EXIT_CODE)
        with contextlib.suppress(Exception):
            await within(jobs_queue.cancel(jobs_tag), HANDOVER_STEP_S)
        # Cancelling the executor cancels its running job, which closes the backend response.
        with contextlib.suppress(Exception):
            await within(stop(lane_tasks), HANDOVER_STEP_S)
        # Closing the channel returns its unacked jobs to the queue, in order, for the standby.
        with contextlib.suppress(Exception):
            await within(jobs_channel.close(), HANDOVER_STEP_S)
        request_exit(FAILED_EXIT_CODE, f"lane stuck for {verdict.stalled_for_s:.0f} s")

    watchdog = Watchdog(lane, settings.lane_stall_s, hand_over)
    status = StatusReporter(
        scheduler_id,
        broker,
        backends,
        lane,
        settings.status_interval_s,
        health=lambda: watchdog.verdict,
        max_queued_per_key=settings.max_queued_per_key,
    )
    app[CORE] = Core(executor, admission, status, watchdog)
    broker.on_lost(admission.connection_lost)
    positions = PositionBroadcaster(lane, sink, settings.position_interval_s)

    jobs_channel = await broker.channel(prefetch=settings.admission_window)
    jobs_queue = await jobs_channel.get_queue(JOBS_QUEUE)

    control_channel = await broker.channel(prefetch=100)
    control_queue = await control_channel.declare_queue(
        f"scheduler.control.{scheduler_id}", exclusive=True, auto_delete=True
    )
    control_exchange = await control_channel.get_exchange(CONTROL_EXCHANGE)
    await control_queue.bind(control_exchange, "cancel.*")
    await control_queue.bind(control_exchange, "admin.#")
    await control_queue.bind(control_exchange, STATUS_REQUEST_KEY)
    await control_queue.consume(admission.on_control)
    # The executor is the lane: if its loop itself fails (one job's failure never ends it),
    # the service exits and a standby takes the lane. The broadcasters hold no state a
    # restart could corrupt.
    async with (
        supervised(Task("executor", executor.run_forever, on_failure="exit")) as executor_tasks,
        supervised(
            Task("positions", positions.run_forever),
            Task("status", status.run_forever),
            Task("watchdog", watchdog.run_forever, on_failure="exit"),
        ),
    ):
        lane_tasks.extend(executor_tasks)
        jobs_tag = await jobs_queue.consume(admission.on_job)
        app[CONSUMING].set()
        log.info("scheduler consuming", scheduler_id=scheduler_id, window=settings.admission_window)
        yield
        app[CONSUMING].clear()
        # Stop admitting first, so nothing new lands in a lane that is going away.
        with contextlib.suppress(Exception):
            await jobs_queue.cancel(jobs_tag)
    with contextlib.suppress(Exception):
        await jobs_channel.close()
        await control_channel.close()


def create_app(settings: SchedulerSettings | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings or SchedulerSettings()
    app[CONSUMING] = asyncio.Event()
    app.cleanup_ctx.extend([broker_ctx, backend_ctx, lane_ctx])

    def ready() -> bool:
        core = app.get(CORE)
        stuck = core is not None and core.watchdog.stuck
        return app[CONSUMING].is_set() and app[BROKER].connected and not stuck

    async def health() -> dict[str, Any]:
        core = app.get(CORE)
        broker_ok = BROKER in app and app[BROKER].connected
        body: dict[str, Any] = {"service": "scheduler", "broker": {"connected": broker_ok}}
        if core is not None:
            snapshot = core.status.last or await core.status.snapshot()
            body["ollama"] = snapshot.backend.model_dump()
            body["servers"] = [server.model_dump() for server in snapshot.servers]
            body["queue"] = snapshot.queue.model_dump()
            backend_ok = snapshot.backend.connected
            body["lane"] = core.watchdog.verdict.model_dump()
            stuck_reason = core.watchdog.reason()
        else:
            backend_ok = False
            stuck_reason = None
        body["status"] = (
            "unhealthy"
            if stuck_reason is not None
            else "healthy"
            if broker_ok and backend_ok
            else "degraded"
            if broker_ok
            else "unhealthy"
        )
        if stuck_reason is not None:
            body["reason"] = stuck_reason
        return body

    add_ops_routes(app, health, ready)
    return app
