"""The ops endpoints every service serves: /health, /ready and /metrics.

Services without a public port run them on a small aiohttp app of their own (`ops_app`), so there
is one lifecycle model everywhere; the gateway adds the same routes to its main app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

HealthProbe = Callable[[], Awaitable[dict[str, Any]]]
ReadyProbe = Callable[[], bool]


def add_ops_routes(app: web.Application, health: HealthProbe, ready: ReadyProbe) -> None:
    async def health_handler(_: web.Request) -> web.Response:
        body = await health()
        status = 200 if body.get("status") in ("healthy", "degraded") else 503
        return web.json_response(body, status=status)

    async def ready_handler(_: web.Request) -> web.Response:
        if ready():
            return web.json_response({"ready": True})
        return web.json_response({"ready": False}, status=503)

    async def metrics_handler(_: web.Request) -> web.Response:
        # prometheus_client's content type carries parameters aiohttp will not take as
        # `content_type`, so it goes in the header verbatim.
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/health", health_handler)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/metrics", metrics_handler)
