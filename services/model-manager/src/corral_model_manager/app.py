"""The model manager's app factory: the catalogue, served over RPC as `model-manager`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from corral_common.broker import Broker
from corral_common.errors import CorralError, ErrorType
from corral_common.ops import add_ops_routes
from corral_common.rpc import RpcServer
from corral_model_manager.catalogue import ModelCatalogue
from corral_model_manager.settings import ModelManagerSettings

SERVICE = "model-manager"

SETTINGS = web.AppKey("settings", ModelManagerSettings)
BROKER = web.AppKey("broker", Broker)
CATALOGUE = web.AppKey("catalogue", ModelCatalogue)
RPC = web.AppKey("rpc", RpcServer)


async def catalogue_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[CATALOGUE] = ModelCatalogue(
            session,
            settings.ollama_url,
            ttl_s=settings.model_info_ttl_s,
            timeout_s=settings.backend_timeout_s,
        )
        yield


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = Broker(app[SETTINGS], SERVICE)
    await broker.start()
    app[BROKER] = broker
    catalogue = app[CATALOGUE]

    async def model_info(params: dict[str, Any]) -> Any:
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise CorralError(ErrorType.INVALID_REQUEST, "model is required")
        return await catalogue.model_info(model)

    async def tags(_: dict[str, Any]) -> Any:
        return await catalogue.tags()

    async def running(_: dict[str, Any]) -> Any:
        return await catalogue.running()

    async def show(params: dict[str, Any]) -> Any:
        return await catalogue.show(params)

    server = RpcServer(
        broker,
        SERVICE,
        {"model_info": model_info, "tags": tags, "ps": running, "show": show},
    )
    await server.start()
    app[RPC] = server
    yield
    await server.close()
    await broker.close()


def create_app(settings: ModelManagerSettings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.extend([catalogue_ctx, broker_ctx])

    def ready() -> bool:
        return RPC in app and app[BROKER].connected

    async def health() -> dict[str, Any]:
        broker_ok = BROKER in app and app[BROKER].connected
        return {
            "service": SERVICE,
            "status": "healthy" if broker_ok else "unhealthy",
            "broker": {"connected": broker_ok},
        }

    add_ops_routes(app, health, ready)
    return app
