"""The model manager's app factory: the catalogue and model operations served over RPC as
`model-manager`, the model list broadcast, and the unloader, each a resource of the app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from corral_common.broker import Broker
from corral_common.dead_letters import open_dead_letters, publish_job
from corral_common.messages import Job
from corral_common.ops import add_ops_routes
from corral_common.redaction import redact_url
from corral_common.rpc import RpcServer
from corral_common.status_board import StatusBoard
from corral_common.supervision import Task, supervised
from corral_common.topology import MODELS_ROUTING_KEY, STATUS_REQUEST_KEY
from corral_model_manager.blob_rpc import blob_methods
from corral_model_manager.blob_uploads import BlobUploads
from corral_model_manager.changes import ModelChanges
from corral_model_manager.inbox import Inbox, open_inbox
from corral_model_manager.jobs import JobSubmitter
from corral_model_manager.model_list import ModelListBroadcaster, ModelNames
from corral_model_manager.operations import ModelOperation, ModelOperations
from corral_model_manager.rpc_methods import model_manager_methods
from corral_model_manager.servers import ModelServers, open_servers
from corral_model_manager.settings import ModelManagerSettings
from corral_model_manager.unloader import (
    MemoryProbe,
    Unloader,
    UnloadPolicy,
    host_memory_percent,
)

log = structlog.get_logger(__name__)

SERVICE = "model-manager"

SETTINGS = web.AppKey("settings", ModelManagerSettings)
MEMORY_PROBE: web.AppKey[MemoryProbe] = web.AppKey("memory_probe")
SERVERS = web.AppKey("servers", ModelServers)
BROKER = web.AppKey("broker", Broker)
NAMES = web.AppKey("names", ModelNames)
BROADCASTER = web.AppKey("broadcaster", ModelListBroadcaster)
OPERATIONS = web.AppKey("operations", ModelOperations)
SUBMITTER = web.AppKey("submitter", JobSubmitter)
BOARD = web.AppKey("board", StatusBoard)
UNLOADER = web.AppKey("unloader", Unloader)
CHANGES = web.AppKey("changes", ModelChanges)
RPC = web.AppKey("rpc", RpcServer)
UPLOADS = web.AppKey("uploads", BlobUploads)


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with aiohttp.ClientSession() as session:
        servers = open_servers(
            session,
            settings.backend_servers(),
            ttl_s=settings.model_info_ttl_s,
            timeout_s=settings.backend_timeout_s,
            stall_timeout_s=settings.operation_stall_timeout_s,
        )
        app[SERVERS] = servers
        app[UPLOADS] = BlobUploads(
            servers.head,
            servers.upload,
            idle_s=settings.blob_upload_idle_s,
            max_uploads=settings.blob_uploads_max,
        )
        yield
        await app[UPLOADS].close()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = Broker(app[SETTINGS], SERVICE)
    await broker.start()
    app[BROKER] = broker
    yield
    await broker.close()


async def models_ctx(app: web.Application) -> AsyncIterator[None]:
    """The model list, its broadcast, and pulls/creates (which change it)."""
    settings, broker, servers = app[SETTINGS], app[BROKER], app[SERVERS]
    broadcaster: ModelListBroadcaster | None = None

    def list_changed() -> None:
        if broadcaster is not None:
            broadcaster.wake()

    async def publish_list(body: bytes) -> None:
        await broker.publish_event(MODELS_ROUTING_KEY, body, durable=False)

    async def publish_event(routing_key: str, body: bytes) -> None:
        await broker.publish_event(routing_key, body, durable=True)

    names = ModelNames(servers.tags, on_change=list_changed)
    broadcaster = ModelListBroadcaster(names, publish_list, interval_s=settings.models_broadcast_s)
    changes = ModelChanges(servers, names, broadcaster)

    async def after_change(operation: ModelOperation) -> None:
        # A push changes the registry, not the models here.
        if operation.kind != "push":
            await changes.changed(operation.model)

    operations = ModelOperations(
        servers,
        publish_event,
        interval_s=settings.pull_progress_interval_s,
        on_success=after_change,
        # A pool's pull or create that failed on one server may have succeeded on another.
        on_failure=after_change,
    )
    app[NAMES], app[BROADCASTER], app[CHANGES] = names, broadcaster, changes
    app[OPERATIONS] = operations
    async with supervised(Task("model-list-broadcast", broadcaster.run_forever)):
        yield
    await operations.close()


async def lane_ctx(app: web.Application) -> AsyncIterator[None]:
    """Jobs in the scheduler's lane (preloads, unloads) and what they need to decide."""
    settings, broker = app[SETTINGS], app[BROKER]

    async def publish(job: Job) -> None:
        await publish_job(broker, job)

    submitter = JobSubmitter(
        settings.instance_id, publish, answer_timeout_s=settings.unload_answer_timeout_s
    )
    board = StatusBoard(settings.status_stale_s)
    budgets, default_budget = settings.memory_budgets()
    unloader = Unloader(
        policy=UnloadPolicy(
            idle_unload_s=settings.idle_unload_s,
            memory_pressure_percent=settings.memory_pressure_percent,
            budgets=budgets,
            default_budget=default_budget,
        ),
        board=board,
        running_models=app[SERVERS].loaded,
        submitter=submitter,
        interval_s=settings.unload_check_interval_s,
        memory_probe=app[MEMORY_PROBE],
    )
    app[SUBMITTER], app[BOARD], app[UNLOADER] = submitter, board, unloader
    inbox = Inbox(board, submitter, unloader.answered, app[BROADCASTER].wake)
    channel = await open_inbox(broker, settings.instance_id, inbox)
    # A load or unload the scheduler dead-letters is answered at once, not left to expire.
    await open_dead_letters(channel, settings.instance_id, inbox.dead_letter)

    async def ask_for_status() -> None:
        # Schedulers answer at once, so the unloader need not wait a whole status interval.
        await broker.publish_control(STATUS_REQUEST_KEY, b"{}")

    await ask_for_status()
    broker.on_restored(ask_for_status)
    for model in settings.preload_list():
        try:
            await submitter.submit("load", model, {"model": model}, reason="preload")
        except Exception as exc:
            log.warning("preload not submitted", model=model, error=str(exc))
    async with supervised(Task("unloader", unloader.run_forever)):
        yield
    with contextlib.suppress(Exception):
        await channel.close()


async def rpc_ctx(app: web.Application) -> AsyncIterator[None]:
    server = RpcServer(
        app[BROKER],
        SERVICE,
        {
            **model_manager_methods(
                servers=app[SERVERS],
                operations=app[OPERATIONS],
                names=app[NAMES],
                changes=app[CHANGES],
            ),
            **blob_methods(app[UPLOADS], app[SERVERS]),
        },
    )
    await server.start()
    app[RPC] = server
    yield
    await server.close()


def create_app(
    settings: ModelManagerSettings, *, memory_probe: MemoryProbe = host_memory_percent
) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[MEMORY_PROBE] = memory_probe
    app.cleanup_ctx.extend([backend_ctx, broker_ctx, models_ctx, lane_ctx, rpc_ctx])

    def ready() -> bool:
        return RPC in app and app[BROKER].connected

    async def health() -> dict[str, Any]:
        broker_ok = BROKER in app and app[BROKER].connected
        seen = app[UNLOADER].seen if UNLOADER in app else {}
        servers = [
            {
                "name": server.name,
                "kind": server.kind,
                "url": redact_url(server.url),
                **seen.get(server.name, {}),
            }
            for server in settings.backend_servers()
        ]
        return {
            "service": SERVICE,
            "status": "healthy" if broker_ok else "unhealthy",
            "broker": {"connected": broker_ok},
            # Each model server as the last unload check found it (models loaded, their size,
            # memory use against the budget; docs/models.md).
            "servers": servers,
        }

    add_ops_routes(app, health, ready)
    return app
