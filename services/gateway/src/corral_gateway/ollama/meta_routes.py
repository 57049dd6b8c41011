"""GET|HEAD / and /api/version, as Ollama answers them."""

from __future__ import annotations

from aiohttp import web

from corral_gateway.state import GATEWAY

# What Ollama's development builds report; used until a scheduler has told us the backend's.
UNKNOWN_BACKEND_VERSION = "0.0.0"


async def root(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    statuses = request.app[GATEWAY].hub.status.fresh()
    versions = [s.backend.version for s in statuses if s.backend.version]
    return web.json_response({"version": versions[0] if versions else UNKNOWN_BACKEND_VERSION})
