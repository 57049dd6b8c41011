"""Corral's own API: queue views, sessions and search, the model providers. Errors are
`{"error": {"type", "message", "details"}}`. (`/health`, `/ready` and `/metrics` are the ops
routes every service serves, corral_common.ops; `health.py` says what /health answers.)"""

from __future__ import annotations

from aiohttp import web

from corral_gateway.corral import provider_routes, queue_views, session_routes
from corral_gateway.surfaces import CORRAL, Route

ROUTES = (
    Route("GET", "/sessions", session_routes.session_list),
    Route("POST", "/sessions", session_routes.session_create),
    Route("POST", "/sessions/import", session_routes.session_import),
    Route("GET", "/sessions/{session_id}/export", session_routes.session_export),
    Route("GET", "/sessions/{session_id}/history", session_routes.session_history),
    Route("GET", "/sessions/{session_id}/stats", session_routes.session_stats),
    Route("PATCH", "/sessions/{session_id}", session_routes.session_rename),
    Route("PUT", "/sessions/{session_id}", session_routes.session_rename),
    Route("DELETE", "/sessions/{session_id}", session_routes.session_delete),
    Route("GET", "/api/providers/ollama/models", provider_routes.models),
    Route("POST", "/api/providers/ollama/pull", provider_routes.pull, "admin"),
    Route("GET", "/queue/{request_id}", queue_views.where),
)


def add_routes(router: web.UrlDispatcher) -> None:
    CORRAL.add(router, *ROUTES)
