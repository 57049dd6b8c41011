"""Corral's own session endpoints, answered by the session store over RPC.

These are not Ollama paths, so errors use Corral's shape: `{"error": {"type", "message",
"details"}}` with the documented status (404 `session_not_found`, 400 `invalid_request`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import is_valid_client_id
from corral_gateway.state import GATEWAY
from corral_gateway.wire import json_response

SESSION_STORE = "session-store"
Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sessions", _answering(_list))
    app.router.add_get("/sessions/{session_id}/history", _answering(_history))
    app.router.add_get("/sessions/{session_id}/stats", _answering(_stats))
    app.router.add_patch("/sessions/{session_id}", _answering(_rename))
    app.router.add_put("/sessions/{session_id}", _answering(_rename))
    app.router.add_delete("/sessions/{session_id}", _answering(_delete))
    app.router.add_get("/api/search", _answering(_search))


def _answering(handler: Callable[[web.Request], Awaitable[Any]]) -> Handler:
    async def answer(request: web.Request) -> web.Response:
        try:
            result = await handler(request)
        except CorralError as exc:
            return json_response(exc.corral_body(), exc.status)
        return json_response(result, 200)

    return answer


async def _call(request: web.Request, method: str, **params: Any) -> Any:
    return await request.app[GATEWAY].rpc.call(SESSION_STORE, method, **params)


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    if not is_valid_client_id(session_id):
        raise _invalid("session_id must be 1 to 128 letters, digits, '-' or '_'")
    return session_id


async def _list(request: web.Request) -> Any:
    return await _call(
        request,
        "list",
        limit=_int_query(request, "limit", 20),
        offset=_int_query(request, "offset", 0),
    )


async def _history(request: web.Request) -> Any:
    return await _call(
        request, "history", session_id=_session_id(request), model=request.query.get("model")
    )


async def _stats(request: web.Request) -> Any:
    return await _call(request, "stats", session_id=_session_id(request))


async def _rename(request: web.Request) -> Any:
    session_id = _session_id(request)
    try:
        body = jsonutil.loads(await request.read())
    except jsonutil.JSONDecodeError as exc:
        raise _invalid('the body must be JSON, e.g. {"title": "..."}') from exc
    if not isinstance(body, dict) or not isinstance(body.get("title"), str):
        raise _invalid('the body must be {"title": "<text>"}')
    return await _call(request, "rename", session_id=session_id, title=body["title"])


async def _delete(request: web.Request) -> Any:
    return await _call(request, "delete", session_id=_session_id(request))


async def _search(request: web.Request) -> Any:
    query = request.query.get("q", "")
    if not query.strip():
        raise _invalid("the query parameter q is required")
    return await _call(request, "search", q=query, limit=_int_query(request, "limit", 50))


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise _invalid(f"{name} must be a whole number") from exc


def _invalid(message: str) -> CorralError:
    return CorralError(ErrorType.INVALID_REQUEST, message)
