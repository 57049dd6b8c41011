"""What the router does not say about a route, by method and path: its summary, body, query and
header parameters, success statuses and media types, and the errors it documents beyond those
every route of its access documents (document.py adds those). A route missing here is still
listed, with what its path and its handler's docstring say."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from corral_common.contracts.identity import MAX_LIST
from corral_common.contracts.session_store import CLEAR_CONFIRMATION
from corral_gateway.openapi.schema_parts import (
    BINARY,
    CLIENT_ID,
    DIGEST,
    FLAG,
    GO_DURATION,
    JSON,
    KEY_ID,
    MODEL_NAME,
    NDJSON,
    PRIORITY,
    SECONDS,
    SSE,
    TEXT,
    int_range,
)
from corral_gateway.query_params import OFFSET_MAX, SEARCH_MAX, SESSION_LIST_MAX

OPENAPI_PATH = "/openapi.json"


@dataclass(frozen=True)
class Param:
    """A query or header parameter."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Detail:
    """What the router does not say about a route."""

    summary: str
    body: str | None = None
    """A components.schemas name, or `BINARY` for a raw body."""
    body_required: bool = True
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    status: int = 200
    also: tuple[int, ...] = ()
    """Other success statuses."""
    media: tuple[str, ...] = (JSON,)
    errors: Set[int] = frozenset()
    """Error statuses beyond those every route of its kind documents."""


LIMIT_LIST = Param("limit", int_range(1, SESSION_LIST_MAX), "How many to list.")
OFFSET = Param("offset", int_range(0, OFFSET_MAX), "How many to skip.")
REQUEST_ID_HEADER = Param("X-Request-Id", CLIENT_ID, "The request's id (default: a new one).")
QUEUE_HEADERS = (
    REQUEST_ID_HEADER,
    Param(
        "X-Session-Id",
        CLIENT_ID,
        "The session to keep this conversation in (`new`: a new one, answered in X-Session-Id).",
    ),
    Param("X-Priority", PRIORITY, "The request's priority, at most the key's."),
    Param(
        "X-Queue-Timeout",
        SECONDS,
        "Seconds the request may wait in the queue before it is answered 408.",
    ),
    Param(
        "X-Request-Timeout",
        SECONDS,
        "Seconds within which the request must be answered, queue and generation together: "
        "408 past it in the queue, 504 past it while generating (as `timeout_ms`).",
    ),
    Param(
        "X-Queue-Progress",
        {"type": "string", "enum": ["0", "1"]},
        "0: no queue position chunks in the stream.",
    ),
)
FORCE = Param("force", FLAG, "Also when the lane is paused or draining.")
# What a generation may answer beyond a plain request's errors.
GENERATION_ERRORS = frozenset({404, 408, 409, 413, 500, 504})
MODEL_OPERATION_ERRORS = frozenset({404, 409, 500, 504})
STREAMED = (NDJSON, JSON)


def generation(summary: str, body: str, *media: str) -> Detail:
    """A route that queues a generation: the queue's headers, a generation's errors."""
    return Detail(
        summary, body, headers=QUEUE_HEADERS, media=media or (JSON,), errors=GENERATION_ERRORS
    )


def model_job(
    summary: str,
    body: str | None = None,
    *,
    query: tuple[Param, ...] = (),
    media: tuple[str, ...] = (JSON,),
) -> Detail:
    """A model operation run as a job (its id in X-Request-Id), with a model operation's errors."""
    return Detail(
        summary,
        body,
        query=query,
        headers=(REQUEST_ID_HEADER,),
        media=media,
        errors=MODEL_OPERATION_ERRORS,
    )


def archived_listing(summary: str, what: str) -> Detail:
    """A list of the caller's active `what`, or with `archived` the archived ones."""
    archived = Param("archived", FLAG, f"The archived {what} instead of the active ones.")
    return Detail(summary, query=(LIMIT_LIST, OFFSET, archived))


DETAILS: dict[tuple[str, str], Detail] = {
    ("GET", "/"): Detail("Ollama's liveness answer: `Ollama is running`.", media=(TEXT,)),
    ("GET", "/api/version"): Detail("The model server's version."),
    ("POST", "/api/chat"): generation(
        "Chat with a model, optionally in a session Corral keeps; or send a message to a "
        "conversation (llama-chat's API: a body with `conversation_id` and no `messages`).",
        "ChatRequest",
        NDJSON,
        JSON,
        SSE,
    ),
    ("POST", "/api/generate"): generation(
        "Generate a completion for a prompt.", "OllamaGenerateRequest", NDJSON, JSON
    ),
    ("POST", "/api/embed"): generation(
        "Embed one input or a list of inputs.", "OllamaEmbedRequest"
    ),
    ("POST", "/api/embeddings"): generation(
        "Embed a prompt (Ollama's older endpoint).", "OllamaEmbeddingRequest"
    ),
    ("GET", "/api/tags"): Detail("The models the model server has."),
    ("GET", "/api/ps"): Detail("The models loaded in memory."),
    ("POST", "/api/show"): Detail("A model's details.", "OllamaShowRequest", errors={404}),
    ("DELETE", "/api/delete"): Detail(
        "Delete a model.", "OllamaDeleteRequest", errors=MODEL_OPERATION_ERRORS
    ),
    ("POST", "/api/copy"): Detail(
        "Copy a model to a new name.", "OllamaCopyRequest", errors=MODEL_OPERATION_ERRORS
    ),
    ("POST", "/api/pull"): model_job(
        "Pull a model from a registry, with progress lines.", "OllamaPullRequest", media=STREAMED
    ),
    ("POST", "/api/create"): model_job(
        "Create a model from another one, files or a Modelfile's settings.",
        "OllamaCreateRequest",
        media=STREAMED,
    ),
    ("POST", "/api/push"): model_job(
        "Push a model to a registry, with progress lines.", "OllamaPushRequest", media=STREAMED
    ),
    ("HEAD", "/api/blobs/{digest}"): Detail(
        "Whether the model server has a blob.", media=(), errors={404}
    ),
    ("POST", "/api/blobs/{digest}"): Detail(
        "Upload a blob (201 created, 200 already there).",
        BINARY,
        status=201,
        also=(200,),
        media=(),
        errors={500},
    ),
    ("GET", "/sessions"): archived_listing(
        "The caller's sessions, newest first (the active ones, or the archived ones).", "sessions"
    ),
    ("POST", "/sessions"): Detail(
        "Create an empty session with a new id (answered in X-Session-Id too).",
        "SessionCreate",
        body_required=False,
        status=201,
    ),
    ("POST", "/sessions/import"): Detail(
        "Restore a session from its export, owned by the caller (idempotent by turn id; 201 "
        "when it made the session).",
        "SessionImport",
        status=201,
        also=(200,),
        errors={404},
    ),
    ("GET", "/sessions/{session_id}/export"): Detail(
        "A session with every turn, its times, stats and metadata.", errors={404}
    ),
    ("GET", "/sessions/{session_id}/history"): Detail(
        "A session's turns.",
        errors={404},
        query=(Param("model", {"type": "string"}, "Only the turns of this model."),),
    ),
    ("GET", "/sessions/{session_id}/stats"): Detail(
        "A session's counts and token totals.", errors={404}
    ),
    ("PATCH", "/sessions/{session_id}"): Detail("Rename a session.", "SessionRename", errors={404}),
    ("PUT", "/sessions/{session_id}"): Detail("Rename a session.", "SessionRename", errors={404}),
    ("DELETE", "/sessions/{session_id}"): Detail("Delete a session and its turns.", errors={404}),
    ("GET", "/api/search"): Detail(
        "Search the caller's sessions' messages (Corral's and llama-chat's fields in one answer).",
        query=(
            Param("q", {"type": "string", "minLength": 1}, "The words to find.", required=True),
            Param("limit", int_range(1, SEARCH_MAX), "How many hits."),
        ),
    ),
    ("GET", "/api/providers/ollama/models"): Detail("The model server's models, with a total."),
    ("POST", "/api/providers/ollama/pull"): model_job(
        "Pull a model and answer once it is done.", "ProviderPullRequest"
    ),
    ("GET", "/queue/{request_id}"): Detail("Where a request stands in the queue.", errors={404}),
    ("POST", "/admin/models/{name}/load"): model_job(
        "Load a model into memory, through the lane.",
        query=(
            Param(
                "keep_alive",
                {"type": "string", "pattern": GO_DURATION},
                "How long the model stays loaded (a Go duration).",
            ),
            FORCE,
        ),
    ),
    ("POST", "/admin/models/{name}/unload"): model_job(
        "Unload a model, through the lane.", query=(FORCE,)
    ),
    ("GET", "/admin/pulls"): Detail("The pulls in progress and recently finished."),
    ("GET", "/admin/queue"): Detail("The whole queue, every scheduler's lane."),
    ("DELETE", "/admin/queue/{request_id}"): Detail("Cancel a request.", status=202),
    ("POST", "/admin/lane/{action}"): Detail("Pause, resume or drain the lane.", status=202),
    ("GET", "/admin/dlq"): Detail(
        "The dead-letter queue's depth and its first jobs.",
        query=(Param("limit", int_range(0, 100), "How many jobs to show."),),
    ),
    ("POST", "/admin/keys"): Detail(
        "Create an API key: the answer is the only time the key is shown.",
        "KeyCreateRequest",
        status=201,
    ),
    ("GET", "/admin/keys"): Detail(
        "The API keys, newest first (never the secrets).",
        query=(
            Param("include_revoked", {"type": "boolean"}, "Also revoked keys."),
            Param("limit", int_range(1, MAX_LIST), "How many to list."),
            OFFSET,
        ),
    ),
    ("GET", "/admin/keys/{key_id}"): Detail("One API key (never the secret).", errors={404}),
    ("DELETE", "/admin/keys/{key_id}"): Detail("Revoke an API key.", errors={404}),
    ("DELETE", "/admin/sessions"): Detail(
        "Delete every session and turn.",
        query=(
            Param(
                "confirm",
                {"type": "string", "enum": [CLEAR_CONFIRMATION]},
                f"Must be `{CLEAR_CONFIRMATION}`.",
                required=True,
            ),
        ),
    ),
    ("GET", "/admin/usage"): Detail(
        "This gateway's usage since it started: requests, tokens and errors, overall, by "
        "model and by caller, and the sessions."
    ),
    ("GET", "/admin/audit"): Detail(
        "The audit log of admin actions, newest first.",
        query=(
            Param("limit", int_range(1, MAX_LIST), "How many entries."),
            OFFSET,
            Param("actor", {"type": "string", "maxLength": 256}, "Only this key id's actions."),
        ),
    ),
    ("POST", "/v1/chat/completions"): generation(
        "OpenAI chat completions.", "OpenAIChatCompletionRequest", JSON, SSE
    ),
    ("POST", "/v1/completions"): generation(
        "OpenAI (legacy) completions.", "OpenAICompletionRequest", JSON, SSE
    ),
    ("POST", "/v1/embeddings"): generation("OpenAI embeddings.", "OpenAIEmbeddingRequest"),
    ("GET", "/v1/models"): Detail("OpenAI's model list."),
    ("GET", "/v1/models/{model}"): Detail("One model, as OpenAI describes it.", errors={404}),
    ("GET", OPENAPI_PATH): Detail("This document."),
    # Llama-chat's conversation API (conversations/).
    ("GET", "/api/models"): Detail("The backend's model names, their count, its address."),
    ("GET", "/api/config"): Detail("The server's effective, non-secret settings."),
    ("GET", "/api/conversations"): archived_listing(
        "The caller's conversations, most recently updated first.", "conversations"
    ),
    ("POST", "/api/conversations"): Detail(
        "Create a conversation.", "ConversationCreate", status=201, errors={404}
    ),
    ("GET", "/api/conversations/{conversation_id}"): Detail(
        "A conversation with its messages and statistics.", errors={404}
    ),
    ("PUT", "/api/conversations/{conversation_id}"): Detail(
        "Rename a conversation.", "ConversationRename", errors={404}
    ),
    ("DELETE", "/api/conversations/{conversation_id}"): Detail(
        "Delete a conversation and its messages.", errors={404}
    ),
    ("GET", "/api/stats/{conversation_id}"): Detail(
        "A conversation's statistics, overall and by role.", errors={404}
    ),
}
# Keyed by the path alone: H2's key routes may name the id `id` or `key_id`.
DETAILS[("GET", "/admin/keys/{id}")] = DETAILS[("GET", "/admin/keys/{key_id}")]
DETAILS[("DELETE", "/admin/keys/{id}")] = DETAILS[("DELETE", "/admin/keys/{key_id}")]

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "session_id": CLIENT_ID,
    "request_id": CLIENT_ID,
    "name": MODEL_NAME,
    "model": MODEL_NAME,
    "digest": DIGEST,
    "action": {"type": "string", "enum": ["pause", "resume", "drain"]},
    "key_id": KEY_ID,
    "id": KEY_ID,
    "conversation_id": {
        **CLIENT_ID,
        "description": "A conversation's number (or the id of a session, which is one too).",
    },
}
