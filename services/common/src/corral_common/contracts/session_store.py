"""The session store's RPC methods (service `session-store`), served by
`corral_session_store.rpc_api`, called by the gateway.

Every method takes an optional `owner` (the principal of the caller's API key): with it, a
session owned by someone else, or by no one (written while auth was off), is answered exactly
like a missing one (404 `session_not_found`, a chat into it too), and `list`/`search` only see
the owner's sessions; without it (admins, and everyone with auth off) nothing is scoped.

    assemble  AssembleParams -> AssembleResult: the history for this model around the new
              messages, cut to the model's window.
    history   HistoryParams -> HistoryResult       (lane `reads`)
    list      ListParams -> SessionList            (lane `reads`)
    rename    RenameParams -> SessionSummary
    delete    SessionParams -> Deleted
    search    SearchParams -> SearchResult         (lane `reads`): bounded by the store's
              `search_*` settings (`limit` capped, the scan timed, then `partial: true`; a search
              over the concurrency bounds, overall or per `caller`, else per `owner`, is refused
              at once with 429 / 503 `rate_limit_exceeded` and Retry-After).
    stats     SessionParams -> StatsResult         (lane `reads`)
    create    CreateParams -> SessionSummary: a new, empty session with a new id (POST /sessions),
              owned by `owner`; its `system_prompt` is the fallback for its chats.
    export    SessionParams -> ExportResult        (lane `reads`): the session and every turn
              with its metadata (`format` "corral.session.v1").
    import_   ImportParams -> ImportResult         (lane `reads`, method name `import`): an
              export restored under its session id, owned by `owner`; idempotent by turn id.
    clear     ClearParams -> Cleared: every session and turn deleted (operators only).

Lifecycle (docs/session-store.md): sessions idle for the store's `session_archive_after_s` are
archived by a periodic job in the store (`list` shows them with `archived`, a chat into one
resumes it), and deleted `session_retention_s` after that when a retention is set.

history, list, rename, delete, search and stats answer the documents the gateway serves as
they are (`GET /api/sessions...`, `/api/search`): their top-level fields are declared here,
their items are the store's JSON objects.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from corral_common.contracts import SESSION_STORE_SERVICE, Method, Params, Result
from corral_common.ids import is_valid_client_id

MAX_TITLE = 200
MAX_QUERY = 200
MAX_MODEL_NAME = 256
MAX_MESSAGES = 10_000
MAX_LIST = 500
MAX_SEARCH = 200
MAX_OFFSET = 1_000_000
MAX_HISTORY_LENGTH = 100_000
MAX_METADATA_BYTES = 4096
"""A request's `metadata`, as compact JSON, at most this many bytes."""
MAX_SYSTEM_PROMPT = 100_000
MAX_IMPORT_TURNS = 10_000
EXPORT_FORMAT = "corral.session.v1"
CLEAR_CONFIRMATION = "delete-all-sessions"
"""What `DELETE /admin/sessions?confirm=` must say, and what `clear` must be sent."""
READS = "reads"
"""The lane of the slow reads, so a burst of them never waits in front of context assembly."""


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


def _at_most(limit: int) -> AfterValidator:
    """A length limit on the text as kept (whitespace runs folded), in its own words."""

    def check(value: str) -> str:
        if len(value) > limit:
            raise PydanticCustomError("too_long", "at most {limit} characters", {"limit": limit})
        return value

    return AfterValidator(check)


def _check_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("is not valid Unicode (it contains a lone surrogate)") from exc
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError("must be a JSON object") from exc
    if size > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "too_large",
            "at most {limit} bytes of JSON (this is {size})",
            {"limit": MAX_METADATA_BYTES, "size": size},
        )
    return value


def _utc(value: datetime) -> datetime:
    """A time as the store keeps it: in UTC (naive times taken as UTC), to the millisecond."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


SessionId = Annotated[str, AfterValidator(_check_id)]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]
"""A request's free-form metadata: a JSON object of at most MAX_METADATA_BYTES."""
Moment = Annotated[datetime, AfterValidator(_utc)]
SystemPrompt = Annotated[str, Field(min_length=1, max_length=MAX_SYSTEM_PROMPT)]
ModelName = Annotated[str, Field(max_length=MAX_MODEL_NAME), AfterValidator(_check_model)]
Owner = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, AfterValidator(_check_unicode)]
# The raw bound first (a huge value is refused before it is folded), then the kept one.
Title = Annotated[
    str, Field(max_length=MAX_TITLE * 4), AfterValidator(_check_text), _at_most(MAX_TITLE)
]
Query = Annotated[
    str, Field(max_length=MAX_QUERY * 4), AfterValidator(_check_text), _at_most(MAX_QUERY)
]


class MessageIn(BaseModel):
    """A client's message as the store accepts it; other fields travel on untouched."""

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
    # At most this many stored history messages go with the new ones (None: the store's
    # default, `max_history_length`); the token budget applies too, whichever is tighter.
    max_history_length: Annotated[int, Field(ge=0, le=MAX_HISTORY_LENGTH)] | None = None


class ContextInfo(Result):
    truncated: bool
    messages_used: int
    tokens_used: int
    turns_dropped: int
    # Only when they say something (the wire leaves them out otherwise):
    messages_dropped: int | None = None
    """Stored and new messages not sent (with `truncated`)."""
    limited_by: Literal["tokens", "max_history_length"] | None = None
    """Which limit cut the history (with `truncated`)."""
    max_history_length: int | None = None
    """The message cap that applied (with `truncated`)."""
    system_prompt: Literal["session", "model_default", "default"] | None = None
    """Whose system prompt was used when the conversation had none of its own."""
    resumed: bool | None = None
    """True when this chat made an archived session active again."""

    def wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class AssembleResult(Result):
    messages: list[dict[str, Any]]
    """The backend's messages: the kept history, then the new ones exactly as sent."""
    context_info: ContextInfo
    context_length: int | None
    """The model's window in tokens, when the model manager knows it."""

    def wire(self) -> dict[str, Any]:
        return {**self.model_dump(), "context_info": self.context_info.wire()}


class HistoryParams(Params):
    session_id: SessionId
    model: ModelName | None = None
    owner: Owner | None = None


class HistoryResult(Result):
    session_id: str
    created_at: str | None
    last_activity: str | None
    message_count: int
    messages: list[dict[str, Any]]
    """`{role, content, timestamp, (thinking, images, tool_calls, tool_name), (model when no
    model was asked for)}`."""


class ListParams(Params):
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 20
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    owner: Owner | None = None
    # The archived sessions instead of the active ones.
    archived: bool = False


class SessionSummary(Result):
    """(`archived: true` and `archived_at` on archived sessions; `system_prompt` when the
    session has its own.)"""

    session_id: str
    title: str | None
    created_at: str | None
    last_activity: str | None
    message_count: int
    models: list[str]


class SessionList(Result):
    sessions: list[SessionSummary]
    total: int
    limit: int
    offset: int


class RenameParams(Params):
    session_id: SessionId
    title: Title
    owner: Owner | None = None


class SessionParams(Params):
    """`delete` and `stats`."""

    session_id: SessionId
    owner: Owner | None = None


class Deleted(Result):
    session_id: str
    deleted: bool
    turns_deleted: int


class SearchParams(Params):
    q: Query
    limit: Annotated[int, Field(ge=1, le=MAX_SEARCH)] = 50
    owner: Owner | None = None
    # Who is asking, for the per-caller search bound (the gateway's X-Client-Id, or the
    # client's address); the owner, then one shared "anonymous" caller, otherwise.
    caller: Owner | None = None


class SearchResult(Result):
    query: str
    results: list[dict[str, Any]]
    """`{session_id, title, last_activity, model, request_id, role, content, timestamp,
    (response_time_ms)}`."""
    count: int
    partial: bool


class StatsResult(Result):
    session_id: str
    title: str | None
    created_at: str | None
    last_activity: str | None
    summary: dict[str, Any]
    by_role: list[dict[str, Any]]
    by_model: list[dict[str, Any]]


class CreateParams(Params):
    owner: Owner | None = None
    title: Title | None = None
    system_prompt: SystemPrompt | None = None


class ExportResult(Result):
    format: str
    exported_at: str | None
    session: dict[str, Any]
    """`{session_id, title, created_at, last_activity, models, systems, (system_prompt),
    (archived_at)}`."""
    turn_count: int
    message_count: int
    turns: list[dict[str, Any]]
    """`{id, seq, model, kind, messages, asked_at, answered_at, stats, (metadata)}`."""


class SessionIn(BaseModel):
    """An export's session, as `import` reads it (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    session_id: SessionId
    title: Title | None = None
    created_at: Moment | None = None
    last_activity: Moment | None = None
    system_prompt: SystemPrompt | None = None


class TurnIn(BaseModel):
    """An export's turn, as `import` reads it (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: SessionId
    model: ModelName
    kind: Literal["chat", "generate"] = "chat"
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    asked_at: Moment
    answered_at: Moment
    stats: dict[str, Any] = Field(default_factory=dict)
    metadata: Metadata | None = None


class ImportParams(Params):
    format: Literal["corral.session.v1"] = "corral.session.v1"
    session: SessionIn
    turns: Annotated[list[TurnIn], Field(max_length=MAX_IMPORT_TURNS)] = Field(default_factory=list)
    owner: Owner | None = None


class ImportResult(SessionSummary):
    created: bool
    """The session did not exist before."""
    turns_imported: int
    turns_skipped: int
    """Already stored (an import is idempotent by turn id)."""


class ClearParams(Params):
    confirm: Literal["delete-all-sessions"]


class Cleared(Result):
    deleted: bool
    sessions_deleted: int
    turns_deleted: int


class SessionStoreApi:
    """The declarations, one attribute per method."""

    service: Final = SESSION_STORE_SERVICE
    assemble: Final = Method(SESSION_STORE_SERVICE, "assemble", AssembleParams, AssembleResult)
    history: Final = Method(SESSION_STORE_SERVICE, "history", HistoryParams, HistoryResult, READS)
    list: Final = Method(SESSION_STORE_SERVICE, "list", ListParams, SessionList, READS)
    rename: Final = Method(SESSION_STORE_SERVICE, "rename", RenameParams, SessionSummary)
    delete: Final = Method(SESSION_STORE_SERVICE, "delete", SessionParams, Deleted)
    search: Final = Method(SESSION_STORE_SERVICE, "search", SearchParams, SearchResult, READS)
    stats: Final = Method(SESSION_STORE_SERVICE, "stats", SessionParams, StatsResult, READS)
    create: Final = Method(SESSION_STORE_SERVICE, "create", CreateParams, SessionSummary)
    export: Final = Method(SESSION_STORE_SERVICE, "export", SessionParams, ExportResult, READS)
    import_: Final = Method(SESSION_STORE_SERVICE, "import", ImportParams, ImportResult, READS)
    clear: Final = Method(SESSION_STORE_SERVICE, "clear", ClearParams, Cleared)


SESSION_STORE = SessionStoreApi()
