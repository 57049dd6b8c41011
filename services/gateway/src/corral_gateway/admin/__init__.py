"""The operators' API under `/admin`: model loads and unloads, pulls, the lane (queue, cancel,
pause / resume / drain, dead letters), API keys and the audit log. Corral's error shape; every
route needs an admin key (with auth on), and every change is audited (identity/gate.py)."""

from __future__ import annotations

from aiohttp import web

from corral_gateway.admin import key_routes, lane_routes, model_routes, session_routes
from corral_gateway.surfaces import ADMIN


def add_routes(router: web.UrlDispatcher) -> None:
    surface = ADMIN
    # Model names may hold `/` (`namespace/model:tag`), hence the regex.
    surface.post(router, r"/admin/models/{name:.+}/load", model_routes.load, "admin")
    surface.post(router, r"/admin/models/{name:.+}/unload", model_routes.unload, "admin")
    surface.get(router, "/admin/pulls", model_routes.pulls, "admin")
    surface.get(router, "/admin/queue", lane_routes.listing, "admin")
    surface.delete(router, "/admin/queue/{request_id}", lane_routes.cancel, "admin")
    surface.post(router, "/admin/lane/{action}", lane_routes.command, "admin")
    surface.get(router, "/admin/dlq", lane_routes.dead_letters, "admin")
    surface.post(router, "/admin/keys", key_routes.create_key, "admin")
    surface.get(router, "/admin/keys", key_routes.list_keys, "admin")
    surface.get(router, "/admin/keys/{key_id}", key_routes.show_key, "admin")
    surface.delete(router, "/admin/keys/{key_id}", key_routes.revoke_key, "admin")
    surface.get(router, "/admin/audit", key_routes.audit_log, "admin")
    surface.delete(router, "/admin/sessions", session_routes.clear_sessions, "admin")
