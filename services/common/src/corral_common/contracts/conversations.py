"""The conversation methods of the session store (service `session-store`): llama-chat's
conversation API over the same sessions the Ollama API keeps, served by
`corral_session_store.conversation_rpc`, called by the gateway's `conversations/` surface.

A conversation *is* a session: conversation N is session "N" (its id in decimal), so a turn
sent through either API lands in the same history. `conversation_id_of` and `session_id_of`
are the one mapping both ends use. New conversations take their number from a counter in
MongoDB that skips numbers some session already has (a client may have named a session "7"
through the Ollama API before conversation 7 was created).

Ownership is the sessions' rule exactly: `owner` (the caller's principal) scopes every read and
change, another owner's conversation is answered like a missing one (404), and lists and
searches cover only the owner's conversations; `owner=None` (admins, auth off) sees all. What
is created is owned by `owner` as given (the caller's principal, admins' too).

    create        CreateParams -> Created
    describe      ConversationParams -> Conversation: the conversation without its messages
                  (the chat path's existence and ownership check)
    detail        ConversationParams -> ConversationDetail          (lane `reads`)
    list          ListParams -> ConversationList                     (lane `reads`)
    stats         ConversationParams -> ConversationStats            (lane `reads`)
    search        SearchParams -> ConversationSearch                 (lane `reads`): today's
                  `/api/search` results with llama-chat's fields added (`id`, `updated_at`,
                  `estimated_tokens`), bounded like the session store's own search
    settings      NoSettingsParams -> StoreSettings: the store's effective, non-secret settings
                  (context window defaults, search bounds), for `GET /api/config`

The results are llama-chat's documents as the gateway serves them; their items are the store's
JSON objects (declared field by field in docs/conversations.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import Field

from corral_common.contracts import SESSION_STORE_SERVICE, Method, Params, Result
from corral_common.contracts.session_store import (
    MAX_LIST,
    MAX_OFFSET,
    READS,
    ModelName,
    Owner,
    SearchParams,
    SessionId,
    Title,
)

# The largest id shown as a JSON integer: JavaScript's numbers hold integers exactly up to
# 2**53, so a longer run of digits is shown as the string it is.
MAX_INTEGER_DIGITS = 15
ConversationId = int | str
"""An integer for a session id that is a canonical decimal number, else the session id."""


def conversation_id_of(session_id: str) -> ConversationId:
    """The id llama-chat's clients see for a session: "42" is 42; "042", "abc" and ids of more
    than 15 digits stay strings (a conversation must map back to the one session it is)."""
    canonical = session_id == "0" or not session_id.startswith("0")
    if (
        session_id.isascii()
        and session_id.isdigit()
        and canonical
        and len(session_id) <= MAX_INTEGER_DIGITS
    ):
        return int(session_id)
    return session_id


def session_id_of(conversation_id: int) -> str:
    """The session of conversation N: "N"."""
    return str(conversation_id)


class CreateParams(Params):
    title: Title
    model: ModelName
    owner: Owner | None = None


class Created(Result):
    conversation_id: int
    session_id: str


class ConversationParams(Params):
    """`describe`, `detail` and `stats`: one conversation, by its session id."""

    session_id: SessionId
    owner: Owner | None = None


class Conversation(Result):
    id: ConversationId
    title: str | None
    model: str | None
    """The model it was created with; for a session the Ollama API started, its newest."""
    created_at: str | None
    updated_at: str | None
    # An archived conversation also has `archived: true` and `archived_at` (extra fields).


class ConversationDetail(Result):
    conversation: Conversation
    messages: list[dict[str, Any]]
    """`{id, conversation_id, role, content, model, timestamp, response_time_ms,
    estimated_tokens}`: `id` is the message's place in the conversation (1 = first)."""
    stats: dict[str, Any]
    """`{total_messages, assistant_messages, avg_response_time, total_tokens}`."""


class ListParams(Params):
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = MAX_LIST
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET)] = 0
    owner: Owner | None = None
    archived: bool = False
    """The archived conversations (the sessions' lifecycle) instead of the active ones."""


class ConversationList(Result):
    conversations: list[Conversation]


class ConversationStats(Result):
    summary: dict[str, Any]
    """`{total_messages, assistant_messages, avg_response_time, total_tokens}`."""
    by_role: list[dict[str, Any]]
    """`{role, count, avg_length, total_tokens, avg_response_time}`, user then assistant."""


class ConversationSearch(Result):
    results: list[dict[str, Any]]
    """Today's `{session_id, title, last_activity, model, request_id, role, content,
    timestamp}` and llama-chat's `{id, updated_at, response_time_ms, estimated_tokens}`."""
    query: str
    count: int
    partial: bool


class NoSettingsParams(Params):
    """`settings` takes nothing."""


class StoreSettings(Result):
    context: dict[str, Any]
    search: dict[str, Any]


class ConversationsApi:
    """The declarations, one attribute per method."""

    service: Final = SESSION_STORE_SERVICE
    create: Final = Method(SESSION_STORE_SERVICE, "conversation_create", CreateParams, Created)
    describe: Final = Method(
        SESSION_STORE_SERVICE, "conversation_describe", ConversationParams, Conversation
    )
    detail: Final = Method(
        SESSION_STORE_SERVICE, "conversation_detail", ConversationParams, ConversationDetail, READS
    )
    list: Final = Method(
        SESSION_STORE_SERVICE, "conversation_list", ListParams, ConversationList, READS
    )
    stats: Final = Method(
        SESSION_STORE_SERVICE, "conversation_stats", ConversationParams, ConversationStats, READS
    )
    search: Final = Method(
        SESSION_STORE_SERVICE, "conversation_search", SearchParams, ConversationSearch, READS
    )
    settings: Final = Method(
        SESSION_STORE_SERVICE, "conversation_settings", NoSettingsParams, StoreSettings
    )


CONVERSATIONS = ConversationsApi()
