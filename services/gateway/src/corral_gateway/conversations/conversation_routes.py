"""Llama-chat's conversations: list, create, read, rename, delete, statistics, and search, over
the session store (`CONVERSATIONS`, and the session methods for rename and delete, so a
conversation is renamed and deleted exactly as its session is).

Identity is the sessions' rule: reads and changes pass the caller's `owner` (another user's
conversation is a 404, as a missing one; lists and searches cover the caller's own; admins and
auth off see all), and a new conversation is owned by the caller's principal.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.contracts.conversations import (
    CONVERSATIONS,
    ConversationParams,
    CreateParams,
    ListParams,
)
from corral_common.contracts.session_store import (
    SESSION_STORE,
    RenameParams,
    SearchParams,
    SessionParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import is_valid_client_id
from corral_gateway.body import read_body
from corral_gateway.conversations.errors import missing_field, validation_error
from corral_gateway.identity.principal import caller_of
from corral_gateway.query_params import (
    OFFSET_MAX,
    SEARCH_MAX,
    SESSION_LIST_MAX,
    flag_query,
    int_query,
)
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY


def _session_id(request: web.Request) -> str:
    """The session of the path's conversation id: N for conversation N (any session id is a
    conversation id too)."""
    raw = request.match_info["conversation_id"]
    if not is_valid_client_id(raw):
        raise validation_error(
            "conversation_id",
            "a conversation id is a number (or a session id: letters, digits, '-', '_')",
        )
    return raw


def _owner(request: web.Request) -> str | None:
    return caller_of(request).owner


async def _object(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, request.app[GATEWAY].settings.max_body_bytes)
    if not raw.strip():
        raise validation_error("body", "missing request body")
    try:
        body = jsonutil.loads_bounded(raw)
    except jsonutil.TooDeep as exc:
        raise validation_error("body", str(exc)) from exc
    except jsonutil.JSONDecodeError as exc:
        raise validation_error("body", "the body must be JSON") from exc
    if not isinstance(body, dict):
        raise validation_error("body", "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if value is None:
        raise missing_field(field)
    if not isinstance(value, str):
        raise validation_error(field, f"{field} must be a string")
    return value


async def conversation_list(request: web.Request) -> web.Response:
    """The caller's conversations, most recently updated first: the active ones, or with
    `?archived=true` the archived ones (the sessions' lifecycle archives idle sessions)."""
    params = ListParams(
        limit=int_query(request, "limit", SESSION_LIST_MAX, minimum=1, maximum=SESSION_LIST_MAX),
        offset=int_query(request, "offset", 0, maximum=OFFSET_MAX),
        owner=_owner(request),
        archived=flag_query(request, "archived"),
    )
    await request.app[GATEWAY].turns.settled()
    found = await request.app[GATEWAY].rpc.call(CONVERSATIONS.list, params)
    return json_response(found.wire(), 200)


async def conversation_create(request: web.Request) -> web.Response:
    """Create a conversation: `{"title", "model"}`, answered 201 `{"conversation_id"}`."""
    gateway = request.app[GATEWAY]
    body = await _object(request)
    title = _text(body, "title")
    model = _text(body, "model")
    if not model.strip():
        raise validation_error("model", "model must not be empty")
    params = CreateParams(title=title, model=model, owner=caller_of(request).principal)
    # A model the backend lacks is refused now rather than at the first message.
    await gateway.models.check(model)
    # Its number must skip the ids sessions already have, those of turns answered here and
    # not yet stored included (a client's session "N+1" made a moment ago stays its own).
    await gateway.turns.settled()
    created = await gateway.rpc.call(CONVERSATIONS.create, params)
    return json_response(
        {"conversation_id": created.conversation_id},
        201,
        {"Location": f"/api/conversations/{created.conversation_id}"},
    )


async def conversation_detail(request: web.Request) -> web.Response:
    """A conversation with all its messages and its statistics."""
    params = ConversationParams(session_id=_session_id(request), owner=_owner(request))
    await request.app[GATEWAY].turns.settled(params.session_id)
    found = await request.app[GATEWAY].rpc.call(CONVERSATIONS.detail, params)
    return json_response(found.wire(), 200)


async def conversation_rename(request: web.Request) -> web.Response:
    """Rename a conversation: `{"title"}`, answered `{"success": true, "title"}`."""
    session_id = _session_id(request)
    title = _text(await _object(request), "title")
    params = RenameParams(session_id=session_id, title=title, owner=_owner(request))
    await request.app[GATEWAY].turns.settled(session_id)
    renamed = await request.app[GATEWAY].rpc.call(SESSION_STORE.rename, params)
    return json_response({"success": True, "title": renamed.title}, 200)


async def conversation_delete(request: web.Request) -> web.Response:
    """Delete a conversation and all its messages."""
    params = SessionParams(session_id=_session_id(request), owner=_owner(request))
    # A turn still being written would bring the conversation back after the delete.
    await request.app[GATEWAY].turns.settled(params.session_id)
    await request.app[GATEWAY].rpc.call(SESSION_STORE.delete, params)
    return json_response({"success": True}, 200)


async def conversation_stats(request: web.Request) -> web.Response:
    """A conversation's statistics: a summary, and counts, lengths, tokens and response times
    by role."""
    params = ConversationParams(session_id=_session_id(request), owner=_owner(request))
    await request.app[GATEWAY].turns.settled(params.session_id)
    found = await request.app[GATEWAY].rpc.call(CONVERSATIONS.stats, params)
    return json_response(found.wire(), 200)


async def search(request: web.Request) -> web.Response:
    """Search the caller's conversations' messages (`q`, `limit`): one answer in both shapes,
    Corral's (`session_id`, `last_activity`, `request_id`) and llama-chat's (`id`, `updated_at`,
    `response_time_ms`, `estimated_tokens`). Errors in Corral's shape, as before llama-chat's
    API was served."""
    query = request.query.get("q", "")
    if not query.strip():
        raise CorralError(ErrorType.INVALID_REQUEST, "the query parameter q is required")
    params = SearchParams(
        q=query,
        limit=int_query(request, "limit", 50, minimum=1, maximum=SEARCH_MAX),
        owner=_owner(request),
        caller=search_caller(request),
    )
    await request.app[GATEWAY].turns.settled()
    found = await request.app[GATEWAY].rpc.call(CONVERSATIONS.search, params)
    return json_response(found.wire(), 200)


def search_caller(request: web.Request) -> str:
    """Who is searching, for the store's per-caller bound: a key's subject; for anonymous
    callers (auth off) their X-Client-Id, as in the queue's fair share, else their address."""
    caller = caller_of(request)
    if caller.key_id is not None:
        return caller.subject[:256]
    key = (caller.client_id or "").strip()
    return (key or caller.address or "anonymous")[:256]
