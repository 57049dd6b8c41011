"""Corral's own API: queue views, sessions and search, the model providers. Errors are
`{"error": {"type", "message", "details"}}`. (`/health`, `/ready` and `/metrics` are the ops
routes every service serves, corral_common.ops; `health.py` says what /health answers.)"""

from __future__ import annotations

from aiohttp import web

from corral_gateway.corral import provider_routes, queue_views, session_routes
from corral_gateway.surfaces import CORRAL


def add_routes(router: web.UrlDispatcher) -> None:
    surface = CORRAL
    surface.get(router, "/sessions", session_routes.session_list)
    surface.post(router, "/sessions", session_routes.session_create)
    surface.post(router, "/sessions/import", session_routes.session_import)
    surface.get(router, "/sessions/{session_id}/export", session_routes.session_export)
    surface.get(router, "/sessions/{session_id}/history", session_routes.session_history)
    surface.get(router, "/sessions/{session_id}/stats", session_routes.session_stats)
    surface.patch(router, "/sessions/{session_id}", session_routes.session_rename)
    surface.put(router, "/sessions/{session_id}", session_routes.session_rename)
    surface.delete(router, "/sessions/{session_id}", session_routes.session_delete)
    surface.get(router, "/api/providers/ollama/models", provider_routes.models)
    surface.post(router, "/api/providers/ollama/pull", provider_routes.pull, "admin")
    surface.get(router, "/queue/{request_id}", queue_views.where)
