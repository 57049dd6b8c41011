"""Corral's own session endpoints, answered by the session store over RPC.

These are not Ollama paths, so errors use Corral's shape: `{"error": {"type", "message",
"details"}}` with the documented status (404 `session_not_found`, 400 `invalid_request`).

Each passes the caller's `owner`: a user key reads, lists, searches and changes its own sessions
only (another owner's is answered exactly like a missing one); admins and auth off, everything.
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from corral_common import jsonutil
from corral_common.contracts import Method, Params, Result
from corral_common.contracts.session_store import (
    SESSION_STORE,
    HistoryParams,
    ListParams,
    RenameParams,
    SearchParams,
    SessionParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id
from corral_gateway.extensions import invalid_id_error
from corral_gateway.identity.principal import caller_of
from corral_gateway.query_params import OFFSET_MAX, SEARCH_MAX, SESSION_LIST_MAX, int_query
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY

P = TypeVar("P", bound=Params)
R = TypeVar("R", bound=Result)


async def _call(request: web.Request, method: Method[P, R], params: P) -> web.Response:
    """The store's answer, as JSON; its errors are raised for the Corral surface to render."""
    result = await request.app[GATEWAY].rpc.call(method, params)
    return json_response(result.wire(), 200)


def _session_id(request: web.Request) -> str:
    try:
        return check_client_id(request.match_info["session_id"], "session_id")
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc


async def session_list(request: web.Request) -> web.Response:
    params = ListParams(
        limit=int_query(request, "limit", 20, minimum=1, maximum=SESSION_LIST_MAX),
        offset=int_query(request, "offset", 0, maximum=OFFSET_MAX),
        owner=_owner(request),
    )
    return await _call(request, SESSION_STORE.list, params)


async def session_history(request: web.Request) -> web.Response:
    params = HistoryParams(
        session_id=_session_id(request), model=request.query.get("model"), owner=_owner(request)
    )
    return await _call(request, SESSION_STORE.history, params)


async def session_stats(request: web.Request) -> web.Response:
    params = SessionParams(session_id=_session_id(request), owner=_owner(request))
    return await _call(request, SESSION_STORE.stats, params)


async def session_rename(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    try:
        body = jsonutil.loads_bounded(await request.read())
    except jsonutil.TooDeep as exc:
        raise _invalid(str(exc)) from exc
    except jsonutil.JSONDecodeError as exc:
        raise _invalid('the body must be JSON, e.g. {"title": "..."}') from exc
    if not isinstance(body, dict) or not isinstance(body.get("title"), str):
        raise _invalid('the body must be {"title": "<text>"}')
    params = RenameParams(session_id=session_id, title=body["title"], owner=_owner(request))
    return await _call(request, SESSION_STORE.rename, params)


async def session_delete(request: web.Request) -> web.Response:
    params = SessionParams(session_id=_session_id(request), owner=_owner(request))
    return await _call(request, SESSION_STORE.delete, params)


async def search(request: web.Request) -> web.Response:
    query = request.query.get("q", "")
    if not query.strip():
        raise _invalid("the query parameter q is required")
    params = SearchParams(
        q=query,
        limit=int_query(request, "limit", 50, minimum=1, maximum=SEARCH_MAX),
        owner=_owner(request),
        caller=_caller(request),
    )
    return await _call(request, SESSION_STORE.search, params)


def _owner(request: web.Request) -> str | None:
    return caller_of(request).owner


def _caller(request: web.Request) -> str:
    """Who is searching, for the store's per-caller bound: a key's subject (`key:<principal>`);
    for anonymous callers (auth off) their X-Client-Id, as in the queue's fair share, else
    their address."""
    caller = caller_of(request)
    if caller.key_id is not None:
        return caller.subject[:256]
    key = (caller.client_id or "").strip()
    return (key or caller.address or "anonymous")[:256]


def _invalid(message: str) -> CorralError:
    return CorralError(ErrorType.INVALID_REQUEST, message)
