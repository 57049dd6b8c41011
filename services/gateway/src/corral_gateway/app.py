"""The gateway's app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from corral_common.broker import Broker
from corral_common.contracts.identity import KEYS_CHANGED_KEY
from corral_common.dead_letters import open_dead_letters
from corral_common.ops import add_ops_routes
from corral_common.rpc import RpcClient
from corral_common.status_board import StoreBoard
from corral_common.supervision import supervised
from corral_common.topology import (
    EVENTS_EXCHANGE,
    MODELS_ROUTING_KEY,
    STATUS_REQUEST_KEY,
    STATUS_ROUTING_KEY,
    STORE_STATUS_ROUTING_KEY,
    gateway_queue_name,
)
from corral_gateway import admin, conversations, corral, ollama, openai, openapi, ui
from corral_gateway.access_log import access_log_middleware
from corral_gateway.corral import health as health_report
from corral_gateway.directory import ModelDirectory
from corral_gateway.host_check import host_check_middleware
from corral_gateway.hub import Hub
from corral_gateway.identity.directory import StoreKeyDirectory
from corral_gateway.identity.exposure import check_exposure
from corral_gateway.identity.gate import GATEKEEPER, Gatekeeper, add_rate_limit_headers
from corral_gateway.origins import add_cors_headers, origin_middleware
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, SETTINGS, Gateway
from corral_gateway.submit import Submitter
from corral_gateway.surfaces import admin_only, unknown_routes
from corral_gateway.usage import ObservedStatusBoard

log = structlog.get_logger(__name__)


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    broker = Broker(settings, "gateway")
    await broker.start()
    submitter = Submitter(broker)
    rpc = RpcClient(broker, timeout_s=settings.rpc_timeout_s)
    await rpc.start()

    def cancel_stray(request_id: str) -> None:
        gateway.spawn(submitter.cancel(request_id, "no client is waiting for it"))

    directory = ModelDirectory(rpc)
    gate = app[GATEKEEPER]
    hub = Hub(
        ObservedStatusBoard(settings.status_stale_s),
        cancel_stray,
        directory.update,
        StoreBoard(settings.status_stale_s),
        on_key_changed=lambda changed: gate.key_changed(changed.key_hash),
        gateway_id=settings.instance_id,
    )
    broker.on_lost(hub.broker_lost)
    gateway = Gateway(
        settings=settings,
        broker=broker,
        hub=hub,
        submitter=submitter,
        rpc=rpc,
        models=directory,
    )
    app[GATEWAY] = gateway
    hub.observe(gateway.turns.observe)
    hub.observe(gateway.callers.heard)
    gate.attach(StoreKeyDirectory(rpc), gateway.spawn)

    # This replica's own event queue: exclusive, so it (and its bindings) vanish with us.
    channel = await broker.channel(prefetch=1000)
    queue = await channel.declare_queue(
        gateway_queue_name(settings.instance_id), exclusive=True, auto_delete=True
    )
    events = await channel.get_exchange(EVENTS_EXCHANGE)
    await queue.bind(events, f"gw.{settings.instance_id}.#")
    await queue.bind(events, STATUS_ROUTING_KEY)
    await queue.bind(events, MODELS_ROUTING_KEY)
    await queue.bind(events, STORE_STATUS_ROUTING_KEY)
    await queue.bind(events, KEYS_CHANGED_KEY)
    await queue.consume(hub.on_message, no_ack=True)
    # Dead-lettered jobs of this replica fail their requests at once (common.dead_letters).
    await open_dead_letters(channel, settings.instance_id, hub.fail)

    async def ask_for_status() -> None:
        await broker.publish_control(STATUS_REQUEST_KEY, b"{}")

    async def after_reconnect() -> None:
        # Key changes broadcast while this replica was away were lost with its queue.
        gate.keys.clear()
        await ask_for_status()

    await ask_for_status()
    broker.on_restored(after_reconnect)
    log.info("gateway ready", gateway_id=settings.instance_id)
    async with supervised(*gate.tasks()):
        yield
    await gate.flush_counts()
    gateway.turns.close()
    if gateway.background:
        await asyncio.wait(gateway.background, timeout=5)
    await rpc.close()
    await channel.close()
    await broker.close()


ADMIN_OPS_PATHS = frozenset({"/metrics"})


def edge_middlewares(settings: GatewaySettings) -> list[Middleware]:
    # Ollama's order: CORS first (a preflight is answered before the Host check), then the
    # Host check, then gin's answers for unknown routes. Each surface renders its own errors
    # (surfaces.py), inside these. Outermost, the access log: it sees every answer's status.
    middlewares = [
        access_log_middleware(enabled=settings.access_log),
        origin_middleware(settings.origin_list()),
    ]
    host_check = host_check_middleware(settings.gateway_host, settings.allowed_host_list())
    if host_check is not None:
        middlewares.append(host_check)
    middlewares.append(unknown_routes)
    if settings.auth == "on":
        # The common ops routes are no surface's; with keys, /metrics needs an admin one.
        middlewares.append(admin_only(ADMIN_OPS_PATHS))
    return middlewares


def create_app(settings: GatewaySettings | None = None) -> web.Application:
    settings = settings or GatewaySettings()
    # Refuses settings that would expose the gateway (auth off beyond loopback, a short
    # operator key); __main__ runs it first to exit with the message alone.
    for warning in check_exposure(settings):
        log.warning(warning)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=edge_middlewares(settings),
    )
    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(add_rate_limit_headers)
    app[SETTINGS] = settings
    # Every surface route passes it (surfaces.py); the store is attached in gateway_ctx.
    app[GATEKEEPER] = Gatekeeper(settings)
    app.cleanup_ctx.append(gateway_ctx)
    # One route group per API surface, each rendering its own errors (surfaces.py).
    ollama.add_routes(app.router)
    corral.add_routes(app.router)
    admin.add_routes(app.router)
    openai.add_routes(app.router)
    conversations.add_routes(app.router)
    openapi.add_routes(app.router)
    # The operator's page at /ui and its event stream (after gateway_ctx: it uses the hub).
    ui.install(app)

    def ready() -> bool:
        # Not ready while it cannot serve: no broker, no scheduler, or a stuck lane.
        return GATEWAY in app and health_report.can_serve(app[GATEWAY])

    async def health() -> dict[str, object]:
        if GATEWAY not in app:
            return {"status": "unhealthy"}
        return await health_report.health(app[GATEWAY])

    add_ops_routes(app, health, ready)
    return app
