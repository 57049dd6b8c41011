"""`GET /api/models` and `GET /api/config` as llama-chat answers them.

`/api/models` lists the backend's model names (`{models, count, backend_url}`; llama-chat's
`llamacpp_url` named for what it is, the model server Corral fronts). A backend that cannot be
asked is llama-chat's own error answer: `{models: [], count: 0, error, backend_url}` with the
failure's status.

`/api/config` is the effective, non-secret configuration a client can act on: the default
model, timeouts, the context window defaults (from the session store), queue and request limits
(the caller's own, its key's overrides applied), search bounds and feature flags. Never a key,
a password, a URL or anything from which one could be read. The backend's URL appears only in
`/api/models`, as scheme, host, port and path (no user, password or query).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from corral_common.contracts.conversations import CONVERSATIONS, NoSettingsParams
from corral_common.contracts.model_manager import MODEL_MANAGER, NoParams
from corral_common.errors import CorralError
from corral_gateway.identity.principal import caller_of
from corral_gateway.query_params import SEARCH_MAX, SESSION_LIST_MAX
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY, Gateway


def public_url(url: str) -> str | None:
    """`url` without what could be a credential: its user part, query and fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def backend_url(gateway: Gateway) -> str | None:
    """The model server the lane talks to, as the schedulers report it (else this gateway's
    own setting, which a deployment gives every service)."""
    for status in gateway.hub.status.fresh():
        if status.backend.url:
            return public_url(status.backend.url)
    return public_url(gateway.settings.ollama_url)


def default_model(gateway: Gateway) -> str | None:
    """The model to start a conversation with when the client has no preference: the one the
    backend has loaded now (no model swap), else the first the backend lists."""
    for status in gateway.hub.status.fresh():
        if status.backend.loaded_model:
            return status.backend.loaded_model
    names = gateway.models.names
    return names[0] if names else None


async def models(request: web.Request) -> web.Response:
    """The backend's model names, with their count and the backend's address."""
    gateway = request.app[GATEWAY]
    url = backend_url(gateway)
    try:
        tags = await gateway.rpc.call(MODEL_MANAGER.tags, NoParams())
    except CorralError as exc:
        body = {"models": [], "count": 0, "error": exc.message, "backend_url": url}
        return json_response(body, exc.status, exc.headers)
    names = [
        str(model.get("name") or model.get("model"))
        for model in tags.models
        if model.get("name") or model.get("model")
    ]
    return json_response({"models": names, "count": len(names), "backend_url": url}, 200)


def _limit(own: int | None, default: int) -> int | None:
    """A key's override, else the gateway's default; 0 (no limit) as null."""
    value = own if own is not None else default
    return value or None


async def config(request: web.Request) -> web.Response:
    """The server's effective, non-secret settings (no key, password or URL)."""
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    caller = caller_of(request)
    store: dict[str, Any] = {"context": None, "search": None}
    # The store away: what it decides is unknown (null), the rest still holds.
    with contextlib.suppress(CorralError):
        store = (await gateway.rpc.call(CONVERSATIONS.settings, NoSettingsParams())).wire()
    keyed = caller.key_id is not None
    limits = caller.limits
    answer = {
        "default_model": default_model(gateway),
        "timeouts": {
            "queue_timeout_s": settings.queue_timeout_s or None,
            "queue_timeout_max_s": settings.queue_timeout_max_s or None,
            "heartbeat_s": settings.heartbeat_s,
        },
        "context": store.get("context"),
        "queue": {
            "max_length": settings.queue_max_length,
            "max_queued_per_caller": limits.max_queued,  # null: the scheduler's default
        },
        "limits": {
            "requests_per_minute": _limit(
                limits.requests_per_minute,
                settings.rate_limit_per_minute
                if keyed
                else settings.anonymous_rate_limit_per_minute,
            ),
            "tokens_per_minute": _limit(limits.tokens_per_minute, settings.tokens_per_minute),
            "tokens_per_day": _limit(limits.tokens_per_day, settings.tokens_per_day),
            "max_body_bytes": settings.max_body_bytes,
            "conversations_per_page": SESSION_LIST_MAX,
            "search_results": SEARCH_MAX,
        },
        "search": store.get("search"),
        "features": {
            "auth": settings.auth == "on",
            "streaming": True,
            "queue_positions": True,
            "sessions": True,
            "openai_user_sessions": settings.openai_user_sessions,
        },
        "response_optimization": {"stream": False},
    }
    return json_response(answer, 200)
