"""GET|HEAD / and /api/version (as Ollama answers them) and the seed API's /health."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from corral_common import __version__
from corral_gateway.state import GATEWAY, Gateway

# What Ollama's development builds report; used until a scheduler has told us the backend's.
UNKNOWN_BACKEND_VERSION = "0.0.0"


async def root(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    statuses = request.app[GATEWAY].hub.status.fresh()
    versions = [s.backend.version for s in statuses if s.backend.version]
    return web.json_response({"version": versions[0] if versions else UNKNOWN_BACKEND_VERSION})


async def health(gateway: Gateway) -> dict[str, Any]:
    statuses = gateway.hub.status.fresh()
    broker_ok = gateway.broker.connected
    backends = [s.backend for s in statuses]
    connected = [b for b in backends if b.connected]
    backend = connected[0] if connected else (backends[0] if backends else None)
    waiting = sum(s.queue.waiting for s in statuses)
    running = sum(s.queue.running for s in statuses)
    waits = [s.queue.average_wait_ms for s in statuses if s.queue.waiting]
    if not broker_ok:
        status = "unhealthy"
    elif not statuses or not connected:
        status = "degraded"
    else:
        status = "healthy"
    return {
        "status": status,
        "version": __version__,
        "ollama": {
            "connected": bool(connected),
            "url": backend.url if backend else gateway.settings.ollama_url,
            "version": backend.version if backend else None,
            "error": backend.error if backend and not backend.connected else None,
            "current_model_loaded": backend.loaded_model if backend else None,
        },
        "queue": {
            "depth": waiting + running,
            "waiting": waiting,
            "running": running,
            "average_wait_ms": max(waits) if waits else 0,
            "processing_rate": round(sum(s.queue.processing_rate for s in statuses), 3),
        },
        "broker": {"connected": broker_ok},
        "schedulers": len(statuses),
        "in_flight": gateway.hub.in_flight,
        "uptime": round(time.monotonic() - gateway.started_at),
    }
