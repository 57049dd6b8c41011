"""The scheduler's app factory: resources in cleanup_ctx, consumers and the executor as tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from corral_common.broker import Broker
from corral_common.ops import add_ops_routes
from corral_common.topology import CONTROL_EXCHANGE, JOBS_QUEUE, STATUS_REQUEST_KEY
from corral_scheduler.admission import Admission
from corral_scheduler.backend import OllamaBackend
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink
from corral_scheduler.executor import Executor
from corral_scheduler.lane import Lane
from corral_scheduler.load_guard import GuardPolicy, LoadGuard
from corral_scheduler.ordering import Ordering, OrderingPolicy
from corral_scheduler.positions import PositionBroadcaster
from corral_scheduler.settings import SchedulerSettings
from corral_scheduler.status import StatusReporter

log = structlog.get_logger(__name__)


@dataclass
class Core:
    executor: Executor
    admission: Admission
    status: StatusReporter


SETTINGS = web.AppKey("settings", SchedulerSettings)
BROKER = web.AppKey("broker", Broker)
BACKEND = web.AppKey("backend", OllamaBackend)
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
    # One connection is all a serial lane ever needs; the limit makes that a fact.
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector) as session:
        app[BACKEND] = OllamaBackend(
            session,
            settings.ollama_url,
            connect_timeout_s=settings.backend_connect_timeout_s,
            read_timeout_s=settings.backend_read_timeout_s,
        )
        yield


async def lane_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, broker = app[SETTINGS], app[BROKER]
    scheduler_id = settings.instance_id
    lane = Lane(
        Ordering(
            OrderingPolicy(
                fair_share=settings.fair_share,
                aging_s=settings.aging_s,
                group_bound=settings.group_bound,
            ),
            time.monotonic,
        )
    )
    sink = EventSink(broker)
    speeds = SpeedBook(
        prompt_tokens_per_s=settings.prior_prompt_tokens_per_s,
        eval_tokens_per_s=settings.prior_eval_tokens_per_s,
        load_ms=settings.prior_load_ms,
        eval_count=settings.prior_eval_count,
    )
    guard = LoadGuard(
        GuardPolicy(
            num_ctx=settings.num_ctx_policy,
            default_num_ctx=settings.default_num_ctx,
            num_ctx_max=settings.num_ctx_max,
            keep_alive_min_s=settings.keep_alive_min_s,
            keep_alive_max_s=settings.keep_alive_max_s,
        )
    )
    executor = Executor(lane, app[BACKEND], sink, speeds, guard, settings.takeover_grace_s)
    admission = Admission(scheduler_id, lane, executor, sink, speeds, settings.max_queued_per_key)
    status = StatusReporter(
        scheduler_id, broker, app[BACKEND], executor, settings.status_interval_s
    )
    app[CORE] = Core(executor, admission, status)
    broker.on_lost(admission.connection_lost)
    positions = PositionBroadcaster(executor, sink, settings.position_interval_s)
    tasks = [
        asyncio.create_task(executor.run_forever(), name="executor"),
        asyncio.create_task(positions.run_forever(), name="positions"),
        asyncio.create_task(status.run_forever(), name="status"),
    ]

    jobs_channel = await broker.channel(prefetch=settings.admission_window)
    jobs_queue = await jobs_channel.get_queue(JOBS_QUEUE)
    jobs_tag = await jobs_queue.consume(admission.on_job)

    control_channel = await broker.channel(prefetch=100)
    control_queue = await control_channel.declare_queue(
        f"scheduler.control.{scheduler_id}", exclusive=True, auto_delete=True
    )
    control_exchange = await control_channel.get_exchange(CONTROL_EXCHANGE)
    await control_queue.bind(control_exchange, "cancel.*")
    await control_queue.bind(control_exchange, "admin.#")
    await control_queue.bind(control_exchange, STATUS_REQUEST_KEY)
    await control_queue.consume(admission.on_control)
    app[CONSUMING].set()
    log.info("scheduler consuming", scheduler_id=scheduler_id, window=settings.admission_window)
    yield
    app[CONSUMING].clear()
    # Stop admitting first, so nothing new lands in a lane that is going away.
    with contextlib.suppress(Exception):
        await jobs_queue.cancel(jobs_tag)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await jobs_channel.close()
        await control_channel.close()


def create_app(settings: SchedulerSettings | None = None) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings or SchedulerSettings()
    app[CONSUMING] = asyncio.Event()
    app.cleanup_ctx.extend([broker_ctx, backend_ctx, lane_ctx])

    def ready() -> bool:
        return app[CONSUMING].is_set() and app[BROKER].connected

    async def health() -> dict[str, Any]:
        core = app.get(CORE)
        broker_ok = BROKER in app and app[BROKER].connected
        body: dict[str, Any] = {"service": "scheduler", "broker": {"connected": broker_ok}}
        if core is not None:
            snapshot = core.status.last or await core.status.snapshot()
            body["ollama"] = snapshot.backend.model_dump()
            body["queue"] = snapshot.queue.model_dump()
            backend_ok = snapshot.backend.connected
        else:
            backend_ok = False
        body["status"] = (
            "healthy" if broker_ok and backend_ok else "degraded" if broker_ok else "unhealthy"
        )
        return body

    add_ops_routes(app, health, ready)
    return app
