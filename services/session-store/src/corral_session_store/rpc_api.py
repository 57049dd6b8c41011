"""The RPC methods served on `rpc.session-store` (see corral_common.rpc), with their validation.

Params and results are JSON objects. Every method takes an optional `owner` (the API key's
identity once keys exist): with it, a session owned by someone else is answered exactly like a
missing one, and `list`/`search` only see the owner's sessions; without it (operators, and
everyone until keys exist) nothing is scoped.

    assemble(session_id, model, kind="chat", messages, options=None, owner=None, request_id=None)
        -> {"messages": [...], "context_info": {truncated, messages_used, tokens_used,
            turns_dropped}, "context_length": n}
    history(session_id, model=None, owner=None)
        -> {session_id, created_at, last_activity, message_count,
            messages: [{role, content, timestamp, (model when no model was given)}]}
    list(limit=20, offset=0, owner=None)
        -> {"sessions": [{session_id, title, created_at, last_activity, message_count, models}],
            "total", "limit", "offset"}
    rename(session_id, title, owner=None) -> the session's summary (as in `list`)
    delete(session_id, owner=None) -> {session_id, deleted: true, turns_deleted}
    search(q, limit=50, owner=None, caller=None)
        -> {query, count, partial, results: [{session_id, title, last_activity, model,
            request_id, role, content, timestamp, (response_time_ms)}]}
        Bounded (see search_gate and the `search_*` settings): `limit` is capped at
        `search_max_results`, the scan at `search_timeout_ms` (then `partial: true`), and a
        search over the concurrency bounds (overall, per `caller`, else per `owner`) is refused
        at once: 429 / 503 `rate_limit_exceeded` with Retry-After.
    stats(session_id, owner=None) -> {session_id, title, created_at, last_activity,
            summary: {...}, by_role: [...], by_model: [...]}
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pymongo.errors import PyMongoError

from corral_common.errors import CorralError, ErrorType
from corral_common.ids import is_valid_client_id
from corral_common.rpc import Handler
from corral_session_store.search_gate import SearchGate
from corral_session_store.sessions import SessionService

log = structlog.get_logger(__name__)

SERVICE = "session-store"
MAX_TITLE = 200
MAX_QUERY = 200
MAX_MODEL_NAME = 256
MAX_MESSAGES = 10_000
MAX_LIST = 500
MAX_SEARCH = 200
MAX_OFFSET = 1_000_000


def _check_id(value: str) -> str:
    if not is_valid_client_id(value):
        raise ValueError("must be 1-128 characters of letters, digits, '-' and '_'")
    return value


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def _check_model(value: str) -> str:
    if not value.strip() or _has_control(value):
        raise ValueError("must be a model name")
    return value


def _check_text(value: str) -> str:
    stripped = " ".join(value.split())
    if not stripped:
        raise ValueError("must not be empty")
    if _has_control(stripped):
        raise ValueError("must not contain control characters")
    return stripped


def _check_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("is not valid Unicode (it contains a lone surrogate)") from exc
    return value


SessionId = Annotated[str, AfterValidator(_check_id)]
ModelName = Annotated[str, Field(max_length=MAX_MODEL_NAME), AfterValidator(_check_model)]
Owner = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, AfterValidator(_check_unicode)]


class Params(BaseModel):
    # Unknown params are ignored, so a newer caller can talk to an older store.
    model_config = ConfigDict(extra="ignore", frozen=True)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: Text = ""
    thinking: Text | None = None
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class AssembleParams(Params):
    session_id: SessionId
    model: ModelName
    kind: Literal["chat", "generate"] = "chat"
    messages: Annotated[list[MessageIn], Field(max_length=MAX_MESSAGES)]
    options: dict[str, Any] | None = None
    owner: Owner | None = None
    request_id: SessionId | None = None


class HistoryParams(Params):
    session_id: SessionId
    model: ModelName | None = None
    owner: Owner | None = None


class ListParams(Params):
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 20
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    owner: Owner | None = None


class RenameParams(Params):
    session_id: SessionId
    title: Annotated[str, Field(max_length=MAX_TITLE * 4), AfterValidator(_check_text)]
    owner: Owner | None = None


class SessionParams(Params):
    session_id: SessionId
    owner: Owner | None = None


class SearchParams(Params):
    q: Annotated[str, Field(max_length=MAX_QUERY * 4), AfterValidator(_check_text)]
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH)] = 50
    owner: Owner | None = None
    # Who is asking, for the per-caller search bound (the gateway's X-Client-Id, or the
    # client's address); the owner, then one shared "anonymous" caller, otherwise.
    caller: Owner | None = None


P = TypeVar("P", bound=Params)


def parse(model: type[P], params: dict[str, Any]) -> P:
    """Validate params; errors become `invalid_request` naming the field (never echoing it)."""
    try:
        parsed = model.model_validate(params)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(part) for part in error["loc"]) or "params",
                "message": error["msg"],
            }
            for error in exc.errors(include_input=False, include_url=False)
        ]
        first = errors[0]
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"invalid {first['field']}: {first['message']}",
            details={"errors": errors},
        ) from None
    if isinstance(parsed, RenameParams) and len(parsed.title) > MAX_TITLE:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"invalid title: at most {MAX_TITLE} characters",
            details={"errors": [{"field": "title", "message": f"at most {MAX_TITLE} chars"}]},
        )
    if isinstance(parsed, SearchParams) and len(parsed.q) > MAX_QUERY:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"invalid q: at most {MAX_QUERY} characters",
            details={"errors": [{"field": "q", "message": f"at most {MAX_QUERY} chars"}]},
        )
    return parsed


def _database_errors(handler: Callable[[dict[str, Any]], Awaitable[Any]]) -> Handler:
    """A database that is down is a 503 the caller can retry, not a bug."""

    @functools.wraps(handler)
    async def wrapped(params: dict[str, Any]) -> Any:
        bind = {
            key: params[key]
            for key in ("session_id", "request_id")
            if isinstance(params.get(key), str)
        }
        with structlog.contextvars.bound_contextvars(**bind):
            try:
                return await handler(params)
            except PyMongoError as exc:
                log.warning("database error in RPC", error=str(exc))
                raise CorralError(
                    ErrorType.INTERNAL_ERROR,
                    "the session database is not available; try again shortly",
                    status=503,
                ) from exc

    return wrapped


def methods(service: SessionService, search_gate: SearchGate | None = None) -> dict[str, Handler]:
    store = service.store
    settings = service.settings
    gate = search_gate or SearchGate(
        settings.search_concurrency,
        settings.search_concurrency_per_caller,
        settings.search_retry_after_s,
    )

    async def assemble(params: dict[str, Any]) -> Any:
        p = parse(AssembleParams, params)
        raw = params.get("messages") or []
        return await service.assemble(
            session_id=p.session_id,
            model=p.model,
            kind=p.kind,
            # The client's messages go on exactly as sent (validated above).
            messages=[dict(m) for m in raw],
            options=p.options,
            owner=p.owner,
            request_id=p.request_id,
        )

    async def history(params: dict[str, Any]) -> Any:
        p = parse(HistoryParams, params)
        return await store.history(p.session_id, p.model, p.owner)

    async def list_(params: dict[str, Any]) -> Any:
        p = parse(ListParams, params)
        return await store.list_sessions(p.limit, p.offset, p.owner)

    async def rename(params: dict[str, Any]) -> Any:
        p = parse(RenameParams, params)
        return await store.rename(p.session_id, p.title, p.owner)

    async def delete(params: dict[str, Any]) -> Any:
        p = parse(SessionParams, params)
        return await store.delete(p.session_id, p.owner)

    async def search(params: dict[str, Any]) -> Any:
        p = parse(SearchParams, params)
        with gate.admit(p.caller or p.owner or "anonymous"):
            return await store.search(
                p.q,
                min(p.limit, settings.search_max_results),
                p.owner,
                time_limit_ms=settings.search_timeout_ms,
            )

    async def stats(params: dict[str, Any]) -> Any:
        p = parse(SessionParams, params)
        return await store.stats(p.session_id, p.owner)

    table: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        "assemble": assemble,
        "history": history,
        "list": list_,
        "rename": rename,
        "delete": delete,
        "search": search,
        "stats": stats,
    }
    return {name: _database_errors(handler) for name, handler in table.items()}
