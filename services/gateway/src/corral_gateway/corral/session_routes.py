"""Corral's own session endpoints, answered by the session store over RPC.

These are not Ollama paths, so errors use Corral's shape: `{"error": {"type", "message",
"details"}}` with the documented status (404 `session_not_found`, 400 `invalid_request`).

Each passes the caller's `owner`: a user key reads, lists and changes its own sessions
only (another owner's is answered exactly like a missing one); admins and auth off, everything.
What a caller creates or imports is owned by its principal (admins' too), as a chat's turns are.

The lifecycle (docs/session-store.md): `POST /sessions` makes an empty session with a new id
(201); `GET /sessions?archived=true` lists the archived ones; `GET /sessions/{id}/export` is
the session with every turn and its metadata, which `POST /sessions/import` restores
(idempotent by turn id; 201 when it made the session, else 200).
"""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web

from corral_common import jsonutil
from corral_common.clip import clip
from corral_common.contracts import Method, Params, Result
from corral_common.contracts.session_store import (
    SESSION_STORE,
    CreateParams,
    HistoryParams,
    ImportParams,
    ListParams,
    RenameParams,
    SessionParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id
from corral_gateway.body import read_body
from corral_gateway.extensions import invalid_id_error
from corral_gateway.identity.principal import caller_of
from corral_gateway.query_params import OFFSET_MAX, SESSION_LIST_MAX, flag_query, int_query
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY

CREATE_FIELDS = ("title", "system_prompt")
# What an import reads of an export (`GET /sessions/{id}/export`); the rest is ignored.
IMPORT_FIELDS = ("format", "session", "turns")

P = TypeVar("P", bound=Params)
R = TypeVar("R", bound=Result)


async def _call(
    request: web.Request, method: Method[P, R], params: P, session_id: str | None
) -> web.Response:
    """The store's answer, as JSON; its errors are raised for the Corral surface to render.
    Turns this gateway answered on `session_id` (on any session with None: a list) are stored
    first."""
    await request.app[GATEWAY].turns.settled(session_id)
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
        archived=flag_query(request, "archived"),
    )
    return await _call(request, SESSION_STORE.list, params, None)


async def session_create(request: web.Request) -> web.Response:
    """Create an empty session with a new id (optionally its title and its own system prompt,
    used by its chats that send none); 201 with the session and `X-Session-Id`."""
    body = await _json_object(request, allow_empty=True)
    unknown = sorted(set(body) - set(CREATE_FIELDS))
    if unknown:
        raise _invalid(
            f"unknown field {clip(unknown[0])!r}: use {', '.join(CREATE_FIELDS)}",
            field=unknown[0],
        )
    for name in CREATE_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _invalid(f"{name} must be a string", field=name)
    params = CreateParams(
        owner=caller_of(request).principal,
        title=body.get("title"),
        system_prompt=body.get("system_prompt") or None,
    )
    created = await request.app[GATEWAY].rpc.call(SESSION_STORE.create, params)
    session_id = created.session_id
    headers = {"X-Session-Id": session_id, "Location": f"/sessions/{session_id}/history"}
    return json_response(created.wire(), 201, headers)


async def session_export(request: web.Request) -> web.Response:
    """The session and every turn (ids, times, stats, metadata), for `POST /sessions/import`."""
    session_id = _session_id(request)
    params = SessionParams(session_id=session_id, owner=_owner(request))
    await request.app[GATEWAY].turns.settled(session_id)
    exported = await request.app[GATEWAY].rpc.call(SESSION_STORE.export, params)
    disposition = f'attachment; filename="session-{session_id}.json"'
    return json_response(exported.wire(), 200, {"Content-Disposition": disposition})


async def session_import(request: web.Request) -> web.Response:
    """Restore an export under its session id, owned by the caller; idempotent by turn id."""
    body = await _json_object(request)
    params = ImportParams(
        **{key: body[key] for key in IMPORT_FIELDS if key in body},
        owner=caller_of(request).principal,
    )
    await request.app[GATEWAY].turns.settled(params.session.session_id)
    imported = await request.app[GATEWAY].rpc.call(SESSION_STORE.import_, params)
    status = 201 if imported.created else 200
    return json_response(imported.wire(), status, {"X-Session-Id": imported.session_id})


async def session_history(request: web.Request) -> web.Response:
    params = HistoryParams(
        session_id=_session_id(request), model=request.query.get("model"), owner=_owner(request)
    )
    return await _call(request, SESSION_STORE.history, params, params.session_id)


async def session_stats(request: web.Request) -> web.Response:
    params = SessionParams(session_id=_session_id(request), owner=_owner(request))
    return await _call(request, SESSION_STORE.stats, params, params.session_id)


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
    return await _call(request, SESSION_STORE.rename, params, session_id)


async def session_delete(request: web.Request) -> web.Response:
    params = SessionParams(session_id=_session_id(request), owner=_owner(request))
    return await _call(request, SESSION_STORE.delete, params, params.session_id)


def _owner(request: web.Request) -> str | None:
    return caller_of(request).owner


def _invalid(message: str, *, field: str | None = None) -> CorralError:
    details = {"field": field} if field is not None else None
    return CorralError(ErrorType.INVALID_REQUEST, message, details=details)


async def _json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object (an empty body is `{}` when `allow_empty`)."""
    raw = await read_body(request, request.app[GATEWAY].settings.max_body_bytes)
    if allow_empty and not raw.strip():
        return {}
    try:
        body = jsonutil.loads_bounded(raw)
    except jsonutil.TooDeep as exc:
        raise _invalid(str(exc)) from exc
    except jsonutil.JSONDecodeError as exc:
        raise _invalid("the body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    return body
