"""The session store's app factory: resources in cleanup_ctx, the turns consumer as a task.

Start-up order: MongoDB (indexes, calibration), the broker, the health write probe and status
broadcast, the RPC server (with the model-manager lookup), then the turns consumer; shutdown
in reverse, so the consumer stops taking events before anything it writes with goes away.

The RPC server serves three queues, each with its own consumer and prefetch window: the hot
path (`assemble`, `rename`, `delete`) on `rpc.session-store`, the heavy reads (`search`,
`stats`, `history`, `list`) on `rpc.session-store.reads`, and the gateways' identity calls
(API keys, rate-limit counters, audit) on `rpc.session-store.identity` (see
corral_common.rpc.RPC_LANES), so a burst of searches never delays a chat's context assembly or
a key lookup in the queue; searches are also bounded in time, results and concurrency
(search_gate, `CORRAL_SEARCH_*`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from corral_common.broker import Broker
from corral_common.contracts.identity import IDENTITY_LANE
from corral_common.contracts.model_manager import MODEL_MANAGER, ModelInfoParams
from corral_common.ops import add_ops_routes
from corral_common.redaction import redact_secrets, redact_url
from corral_common.rpc import RpcClient, RpcServer
from corral_common.supervision import Task, supervised
from corral_session_store.conversation_rpc import conversation_methods
from corral_session_store.health import (
    HEALTH_COLLECTION,
    MongoState,
    SessionCounter,
    StatusBroadcaster,
    WriteProbe,
)
from corral_session_store.identity_rpc import IdentityStore, KeyAnnouncer, identity_methods
from corral_session_store.lifecycle import LifecycleJob
from corral_session_store.model_info import (
    CachedContextLengths,
    ContextLengths,
)
from corral_session_store.rpc_api import SERVICE, methods
from corral_session_store.search_gate import BoundedSearches
from corral_session_store.sessions import SessionService
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document, SessionStore
from corral_session_store.turns import TurnConsumer

log = structlog.get_logger(__name__)

DEFAULT_MONGO_URL = "mongodb://127.0.0.1:27017/"


SETTINGS = web.AppKey("settings", SessionStoreSettings)
MONGO = web.AppKey("mongo", AsyncMongoClient)
MONGO_STATE = web.AppKey("mongo_state", MongoState)
STORE = web.AppKey("store", SessionStore)
IDENTITY_STORE = web.AppKey("identity_store", IdentityStore)
BROKER = web.AppKey("broker", Broker)
SERVICE_CORE = web.AppKey("service", SessionService)
LENGTHS = web.AppKey("context_lengths", ContextLengths)
RPC_SERVER = web.AppKey("rpc_server", RpcServer)
TURNS = web.AppKey("turns", TurnConsumer)
STATUS = web.AppKey("status", StatusBroadcaster)


async def _describe_server(client: AsyncMongoClient[Document], state: MongoState) -> None:
    info = await client.admin.command("buildInfo")
    state.version = str(info.get("version")) if info.get("version") else None
    secantus = info.get("secantusVersion")
    state.secantus_version = str(secantus) if secantus else None
    state.server = "secantusdb" if secantus else "mongodb"


async def mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    url = settings.mongo_url
    if not url:
        log.warning("CORRAL_MONGO_URL is not set; using a local MongoDB", url=DEFAULT_MONGO_URL)
        url = DEFAULT_MONGO_URL
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        url,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_timeout_ms,
        connectTimeoutMS=settings.mongo_timeout_ms,
        appname="corral-session-store",
        # Acknowledged only once in the server's journal: the turns queue's message is acked
        # after the write, so a write SecantusDB (or a mongod) still held only in memory when
        # it was SIGKILLed or hit a full disk would be a turn lost for good (docs/reliability.md).
        journal=True,
    )
    state = app[MONGO_STATE]
    store = SessionStore(
        client[settings.mongo_database], tombstone_ttl_s=settings.session_tombstone_ttl_s
    )
    identity = IdentityStore(client[settings.mongo_database])
    # Like the broker: the store may come up after us, so wait for it rather than crash.
    while True:
        try:
            await store.ensure_indexes()
            await identity.ensure_indexes()
            await _describe_server(client, state)
            break
        except PyMongoError as exc:
            state.set(False, str(exc))
            log.warning("MongoDB not usable yet, retrying", error=redact_secrets(str(exc)))
            await asyncio.sleep(1.0)
    state.set(True)
    log.info(
        "mongo connected",
        url=redact_url(url),
        server=state.server,
        version=state.version,
        secantus_version=state.secantus_version,
        database=settings.mongo_database,
    )
    app[MONGO] = client
    app[STORE] = store
    app[IDENTITY_STORE] = identity
    probe = WriteProbe(
        client[settings.mongo_database][HEALTH_COLLECTION],
        state,
        settings.instance_id,
        interval_s=settings.health_interval_s,
        timeout_s=settings.health_write_timeout_s,
    )

    async def purge_counters() -> None:
        await identity.counters.purge_forever(settings.counter_purge_interval_s)

    lifecycle = LifecycleJob(
        store,
        archive_after_s=settings.session_archive_after_s,
        retention_s=settings.session_retention_s,
        interval_s=settings.session_sweep_interval_s,
    )
    counter = SessionCounter(
        store,
        state,
        interval_s=settings.session_count_interval_s,
        timeout_s=settings.mongo_timeout_ms / 1000,
    )
    async with supervised(
        Task("mongo-write-probe", probe.run_forever),
        Task("session-counts", counter.run_forever),
        Task("rate-counter-purge", purge_counters),
        Task("session-lifecycle", lifecycle.run_forever),
    ):
        yield
    await client.close()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    broker = Broker(settings, SERVICE)
    await broker.start()
    app[BROKER] = broker
    yield
    await broker.close()


async def status_ctx(app: web.Application) -> AsyncIterator[None]:
    """The store's status broadcast, started last: a gateway that hears "up" must find the
    store's RPC methods and turns consumer already serving (a chat sent on the first "up" was
    once refused with "no instance of it is running")."""
    settings = app[SETTINGS]
    status = StatusBroadcaster(
        app[BROKER], app[MONGO_STATE], settings.instance_id, settings.status_interval_s
    )
    app[STATUS] = status
    async with supervised(Task("store-status", status.run_forever)):
        yield


async def rpc_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, broker = app[SETTINGS], app[BROKER]
    client: RpcClient | None = None
    if LENGTHS not in app:
        client = RpcClient(broker, timeout_s=settings.model_info_timeout_s)
        await client.start()
        rpc = client

        async def fetch(model: str) -> int | None:
            info = await rpc.call(MODEL_MANAGER.model_info, ModelInfoParams(model=model))
            return info.context_length

        app[LENGTHS] = CachedContextLengths(
            fetch,
            timeout_s=settings.model_info_timeout_s,
            ttl_s=settings.model_info_ttl_s,
            failure_ttl_s=settings.model_info_failure_ttl_s,
        )
    store = app[STORE]
    service = SessionService(
        store, app[LENGTHS], settings, calibrations=await store.load_calibrations()
    )
    app[SERVICE_CORE] = service
    # One set of search bounds for both APIs' searches: they scan the same database.
    searches = BoundedSearches(settings)
    table = {
        **methods(service, searches),
        **conversation_methods(service, searches),
        **identity_methods(app[IDENTITY_STORE], KeyAnnouncer(broker)),
    }
    server = RpcServer(broker, SERVICE, table)
    await server.start(
        prefetch=settings.rpc_prefetch,
        lane_prefetch={
            "reads": settings.reads_prefetch,
            IDENTITY_LANE: settings.identity_prefetch,
        },
    )
    app[RPC_SERVER] = server
    yield
    await server.close()
    if client is not None:
        await client.close()


async def turns_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    consumer = TurnConsumer(
        app[BROKER],
        app[SERVICE_CORE],
        prefetch=settings.turns_prefetch,
        retry_s=settings.turn_retry_s,
        queue_max_length=settings.turns_queue_max_length,
        on_database=lambda ok: app[MONGO_STATE].set(ok, None if ok else "write failed"),
    )
    await consumer.start()
    app[TURNS] = consumer
    yield
    await consumer.stop()
    with contextlib.suppress(PyMongoError):
        await app[SERVICE_CORE].save_calibrations()


def create_app(
    settings: SessionStoreSettings | None = None,
    *,
    context_lengths: ContextLengths | None = None,
) -> web.Application:
    """`context_lengths` replaces the model-manager lookup (tests, fixed deployments)."""
    app = web.Application()
    app[SETTINGS] = settings or SessionStoreSettings()
    app[MONGO_STATE] = MongoState()
    if context_lengths is not None:
        app[LENGTHS] = context_lengths
    app.cleanup_ctx.extend([mongo_ctx, broker_ctx, rpc_ctx, turns_ctx, status_ctx])

    def ready() -> bool:
        turns = app.get(TURNS)
        return (
            turns is not None
            and turns.consuming
            and app[BROKER].connected
            and app[MONGO_STATE].connected
        )

    async def health() -> dict[str, Any]:
        # The database's state comes from the periodic write probe, never from a query per
        # call: probes cannot load the database, and a store that answers pings but cannot
        # write (full disk) is down.
        state = app[MONGO_STATE]
        broker_ok = BROKER in app and app[BROKER].connected
        turns = app.get(TURNS)
        mongo: dict[str, Any] = {
            "connected": state.connected,
            "server": state.server,
            "version": state.version,
            "secantus": state.secantus_version is not None,
            "database": app[SETTINGS].mongo_database,
            "writable": state.connected,
            "last_write_at": state.last_write_at,
        }
        if state.secantus_version is not None:
            mongo["secantus_version"] = state.secantus_version
        if state.error:
            mongo["error"] = state.error
        if broker_ok and state.connected:
            status = "healthy"
        elif broker_ok or state.connected:
            status = "degraded"
        else:
            status = "unhealthy"
        sessions = state.sessions
        return {
            "service": SERVICE,
            "status": status,
            "broker": {"connected": broker_ok},
            "mongo": mongo,
            "turns": {"consuming": bool(turns and turns.consuming)},
            # The last background count (SessionCounter), never a query per call.
            "sessions": sessions.model_dump() if sessions is not None else None,
        }

    add_ops_routes(app, health, ready)
    return app
