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
from corral_common.ids import InvalidId, check_client_id
from corral_gateway.extensions import invalid_id_error
from corral_gateway.query_params import OFFSET_MAX, SEARCH_MAX, SESSION_LIST_MAX, int_query
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
            # Headers too: a search refused for load carries its Retry-After.
            return json_response(exc.corral_body(), exc.status, exc.headers or None)
        return json_response(result, 200)

    return answer


async def _call(request: web.Request, method: str, **params: Any) -> Any:
    return await request.app[GATEWAY].rpc.call(SESSION_STORE, method, **params)


def _session_id(request: web.Request) -> str:
    try:
        return check_client_id(request.match_info["session_id"], "session_id")
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc


async def _list(request: web.Request) -> Any:
    return await _call(
        request,
        "list",
        limit=int_query(request, "limit", 20, minimum=1, maximum=SESSION_LIST_MAX),
        offset=int_query(request, "offset", 0, maximum=OFFSET_MAX),
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
        body = jsonutil.loads_bounded(await request.read())
    except jsonutil.TooDeep as exc:
        raise _invalid(str(exc)) from exc
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
    return await _call(
        request,
        "search",
        q=query,
        limit=int_query(request, "limit", 50, minimum=1, maximum=SEARCH_MAX),
        caller=_caller(request),
    )


def _caller(request: web.Request) -> str:
    """Who is searching, for the store's per-caller bound: the caller's key (X-Client-Id, as
    in the queue's fair share), else its address."""
    key = request.headers.get("X-Client-Id", "").strip()
    return (key or request.remote or "anonymous")[:256]


def _invalid(message: str) -> CorralError:
    return CorralError(ErrorType.INVALID_REQUEST, message)
