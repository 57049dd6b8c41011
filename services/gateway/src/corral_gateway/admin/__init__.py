"""The operators' API under `/admin`: model loads and unloads, pulls, the lane (queue, cancel,
pause / resume / drain, dead letters), API keys and the audit log. Corral's error shape; every
route needs an admin key (with auth on), and every change is audited (identity/gate.py)."""

from __future__ import annotations

from aiohttp import web

from corral_gateway.admin import (
    key_routes,
    lane_routes,
    model_routes,
    session_routes,
    usage_routes,
)
from corral_gateway.surfaces import ADMIN, Route

ROUTES = (
    # Model names may hold `/` (`namespace/model:tag`), hence the regex.
    Route("POST", r"/admin/models/{name:.+}/load", model_routes.load, "admin"),
    Route("POST", r"/admin/models/{name:.+}/unload", model_routes.unload, "admin"),
    Route("GET", "/admin/pulls", model_routes.pulls, "admin"),
    Route("GET", "/admin/queue", lane_routes.listing, "admin"),
    Route("DELETE", "/admin/queue/{request_id}", lane_routes.cancel, "admin"),
    Route("POST", "/admin/lane/{action}", lane_routes.command, "admin"),
    Route("GET", "/admin/dlq", lane_routes.dead_letters, "admin"),
    Route("POST", "/admin/keys", key_routes.create_key, "admin"),
    Route("GET", "/admin/keys", key_routes.list_keys, "admin"),
    Route("GET", "/admin/keys/{key_id}", key_routes.show_key, "admin"),
    Route("DELETE", "/admin/keys/{key_id}", key_routes.revoke_key, "admin"),
    Route("GET", "/admin/audit", key_routes.audit_log, "admin"),
    Route("DELETE", "/admin/sessions", session_routes.clear_sessions, "admin"),
    Route("GET", "/admin/usage", usage_routes.usage_report, "admin"),
)


def add_routes(router: web.UrlDispatcher) -> None:
    ADMIN.add(router, *ROUTES)
