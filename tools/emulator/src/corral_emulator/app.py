"""The application factory: Ollama's routes, the control API, and gin's router fallbacks."""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

from corral_emulator import (
    blob_routes,
    embedding_routes,
    generation_routes,
    info_routes,
    model_routes,
)
from corral_emulator.config import EmulatorConfig
from corral_emulator.control_routes import add_control_routes
from corral_emulator.openai_routes import add_openai_routes
from corral_emulator.state import CONFIG_KEY, STATE_KEY, EmulatorState
from corral_emulator.timeline import ARRIVED_KEY
from corral_emulator.wire import gin_plain_text

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Chat histories with base64 images easily pass aiohttp's 1 MiB default."""


@web.middleware
async def stamp_arrival(request: web.Request, handler: Handler) -> web.StreamResponse:
    """When handling began, for the request timeline (timeline.py): the first thing done."""
    request[ARRIVED_KEY] = (time.monotonic_ns(), time.time_ns())
    return await handler(request)


@web.middleware
async def gin_router_fallbacks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and wrong methods answer in gin's plain text, not aiohttp's HTML-ish body."""
    error = request.match_info.http_exception
    if isinstance(error, web.HTTPMethodNotAllowed):
        return gin_plain_text(405, "405 method not allowed")
    if isinstance(error, web.HTTPNotFound):
        return gin_plain_text(404, "404 page not found")
    return await handler(request)


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    config = config or EmulatorConfig()
    app = web.Application(
        middlewares=[stamp_arrival, gin_router_fallbacks], client_max_size=MAX_BODY_BYTES
    )
    app[CONFIG_KEY] = config
    app[STATE_KEY] = EmulatorState(config)

    router = app.router
    add_openai_routes(app)
    add_control_routes(app)
    if config.openai_only:
        return app
    # add_get also answers HEAD, which Ollama registers for exactly these three paths.
    router.add_get("/", info_routes.root)
    router.add_get("/api/version", info_routes.version)
    router.add_get("/api/tags", info_routes.tags)
    router.add_get("/api/ps", info_routes.ps, allow_head=False)
    router.add_post("/api/show", info_routes.show)
    router.add_post("/api/chat", generation_routes.chat)
    router.add_post("/api/generate", generation_routes.generate)
    router.add_post("/api/embed", embedding_routes.embed)
    router.add_post("/api/embeddings", embedding_routes.embeddings)
    router.add_post("/api/pull", model_routes.pull)
    router.add_post("/api/push", model_routes.push)
    router.add_route("HEAD", "/api/blobs/{digest}", blob_routes.head_blob)
    router.add_post("/api/blobs/{digest}", blob_routes.create_blob)
    router.add_delete("/api/delete", model_routes.delete)
    router.add_post("/api/copy", model_routes.copy)
    router.add_post("/api/create", model_routes.create)
    return app
