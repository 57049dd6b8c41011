"""The gateway's OpenAPI 3.1 document, served at `GET /openapi.json` (access "open").

The document is built from the router itself: every route a surface registered
(`surfaces.route_meta`) is an operation, tagged with its surface and marked with what it asks of
callers (`x-corral-access: open | user | admin`, and `security: []` for open routes), so a route
cannot be added without showing up here with its access level. The ops routes (`/health`,
`/ready`, `/metrics`) are registered by `corral_common.ops` without a surface and are added by
hand. What the router does not know (summaries, bodies, query parameters, statuses) comes from
the tables below; a route missing from them is still listed, with what its path says.

Request bodies are the decoders' own declarations where they exist: the `/v1` bodies are the
pydantic models of `openai.requests`, the native Ollama bodies are derived from
`validation.REQUEST_TYPES` (the Go types Ollama's handlers decode into), so the document states
the types the gateway really checks. Go takes `null` for any field (its zero value), and so does
the gateway; the schemas say so.

Answers: the success status with its media types, and the errors a route documents, each in its
surface's error shape (Ollama `{"error": "<text>"}`, Corral `{"error": {"type", "message",
"details"}}`, OpenAI `{"error": {"message", "type", "param", "code"}}`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Set
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from corral_common.contracts.identity import MAX_LABEL, MAX_LIST, SCOPES
from corral_common.contracts.session_store import (
    CLEAR_CONFIRMATION,
    EXPORT_FORMAT,
    MAX_HISTORY_LENGTH,
    MAX_IMPORT_TURNS,
    MAX_METADATA_BYTES,
)
from corral_common.ids import CLIENT_ID_MAX_CHARS
from corral_common.messages import PRIORITIES
from corral_gateway.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from corral_gateway.query_params import FLAGS, OFFSET_MAX, SEARCH_MAX, SESSION_LIST_MAX
from corral_gateway.surfaces import CORRAL, route_meta
from corral_gateway.validation import (
    DURATION,
    INT,
    RAW,
    REQUEST_TYPES,
    THINK,
    THINK_LEVELS,
    GoType,
)

OPENAPI_PATH = "/openapi.json"
JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain"
BINARY = "application/octet-stream"
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
ERROR_SCHEMAS = {
    "ollama": "OllamaError",
    "corral": "CorralError",
    "admin": "CorralError",
    "openai": "OpenAIError",
    "conversations": "ConversationError",
}
ERROR_DESCRIPTIONS = {
    400: "The request is malformed (body, query, path or header).",
    401: "No key, or a key that is malformed, unknown, revoked or expired.",
    403: "A valid key without the admin scope.",
    404: "The model, session, request or key does not exist (or is not the caller's).",
    408: "The request waited in the queue longer than its queue timeout.",
    409: "A request with this request id is already in flight.",
    413: "The body, or the prompt for the model's context, is too large.",
    429: "Over a rate limit or token quota (or too many failed authentications).",
    500: "The model server failed the request.",
    503: "The broker, a service, the model server or the key store is unavailable, or the "
    "queue is full.",
    504: "The model server did not answer in time.",
}
SUCCESS_DESCRIPTIONS = {200: "OK", 201: "Created", 202: "Accepted"}
PRIORITY = {"type": "string", "enum": list(PRIORITIES)}
CLIENT_ID = {
    "type": "string",
    "pattern": f"^[A-Za-z0-9_-]{{1,{CLIENT_ID_MAX_CHARS}}}$",
    "description": f"1 to {CLIENT_ID_MAX_CHARS} letters, digits, '-' or '_'.",
}
GO_DURATION = r"^(0|[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+)$"  # time.ParseDuration
MODEL_NAME = {
    "type": "string",
    "minLength": 1,
    "description": "A model name, `[host/][namespace/]model[:tag]`.",
}
KEY_ID = {"type": "string", "pattern": "^key_[0-9a-f]{1,64}$"}
DIGEST = {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"}


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


def _int(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


LIMIT_LIST = Param("limit", _int(1, SESSION_LIST_MAX), "How many to list.")
OFFSET = Param("offset", _int(0, OFFSET_MAX), "How many to skip.")
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
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "Seconds the request may wait in the queue before it is answered 408.",
    ),
    Param(
        "X-Request-Timeout",
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
        "Seconds within which the request must be answered, queue and generation together: "
        "408 past it in the queue, 504 past it while generating (as `timeout_ms`).",
    ),
    Param(
        "X-Queue-Progress",
        {"type": "string", "enum": ["0", "1"]},
        "0: no queue position chunks in the stream.",
    ),
)
FLAG = {"type": "string", "enum": list(FLAGS)}
FORCE = Param("force", FLAG, "Also when the lane is paused or draining.")
# What a generation may answer beyond a plain request's errors.
GENERATION_ERRORS = frozenset({404, 408, 409, 413, 500, 504})
MODEL_OPERATION_ERRORS = frozenset({404, 409, 500, 504})

DETAILS: dict[tuple[str, str], Detail] = {
    ("GET", "/"): Detail("Ollama's liveness answer: `Ollama is running`.", media=(TEXT,)),
    ("GET", "/api/version"): Detail("The model server's version."),
    ("POST", "/api/chat"): Detail(
        "Chat with a model, optionally in a session Corral keeps; or send a message to a "
        "conversation (seed 004: a body with `conversation_id` and no `messages`).",
        "ChatRequest",
        headers=QUEUE_HEADERS,
        media=(NDJSON, JSON, SSE),
        errors=GENERATION_ERRORS,
    ),
    ("POST", "/api/generate"): Detail(
        "Generate a completion for a prompt.",
        "OllamaGenerateRequest",
        headers=QUEUE_HEADERS,
        media=(NDJSON, JSON),
        errors=GENERATION_ERRORS,
    ),
    ("POST", "/api/embed"): Detail(
        "Embed one input or a list of inputs.",
        "OllamaEmbedRequest",
        headers=QUEUE_HEADERS,
        errors=GENERATION_ERRORS,
    ),
    ("POST", "/api/embeddings"): Detail(
        "Embed a prompt (Ollama's older endpoint).",
        "OllamaEmbeddingRequest",
        headers=QUEUE_HEADERS,
        errors=GENERATION_ERRORS,
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
    ("POST", "/api/pull"): Detail(
        "Pull a model from a registry, with progress lines.",
        "OllamaPullRequest",
        headers=(REQUEST_ID_HEADER,),
        media=(NDJSON, JSON),
        errors=MODEL_OPERATION_ERRORS,
    ),
    ("POST", "/api/create"): Detail(
        "Create a model from another one, files or a Modelfile's settings.",
        "OllamaCreateRequest",
        headers=(REQUEST_ID_HEADER,),
        media=(NDJSON, JSON),
        errors=MODEL_OPERATION_ERRORS,
    ),
    ("POST", "/api/push"): Detail(
        "Push a model to a registry, with progress lines.",
        "OllamaPushRequest",
        headers=(REQUEST_ID_HEADER,),
        media=(NDJSON, JSON),
        errors=MODEL_OPERATION_ERRORS,
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
    ("GET", "/sessions"): Detail(
        "The caller's sessions, newest first (the active ones, or the archived ones).",
        query=(
            LIMIT_LIST,
            OFFSET,
            Param("archived", FLAG, "The archived sessions instead of the active ones."),
        ),
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
        "Search the caller's sessions' messages (Corral's and seed 004's fields in one answer).",
        query=(
            Param("q", {"type": "string", "minLength": 1}, "The words to find.", required=True),
            Param("limit", _int(1, SEARCH_MAX), "How many hits."),
        ),
    ),
    ("GET", "/api/providers/ollama/models"): Detail("The model server's models, with a total."),
    ("POST", "/api/providers/ollama/pull"): Detail(
        "Pull a model and answer once it is done.",
        "ProviderPullRequest",
        headers=(REQUEST_ID_HEADER,),
        errors=MODEL_OPERATION_ERRORS,
    ),
    ("GET", "/queue/{request_id}"): Detail("Where a request stands in the queue.", errors={404}),
    ("POST", "/admin/models/{name}/load"): Detail(
        "Load a model into memory, through the lane.",
        query=(
            Param(
                "keep_alive",
                {"type": "string", "pattern": GO_DURATION},
                "How long the model stays loaded (a Go duration).",
            ),
            FORCE,
        ),
        headers=(REQUEST_ID_HEADER,),
        errors=MODEL_OPERATION_ERRORS,
    ),
    ("POST", "/admin/models/{name}/unload"): Detail(
        "Unload a model, through the lane.",
        query=(FORCE,),
        headers=(REQUEST_ID_HEADER,),
        errors=MODEL_OPERATION_ERRORS,
    ),
    ("GET", "/admin/pulls"): Detail("The pulls in progress and recently finished."),
    ("GET", "/admin/queue"): Detail("The whole queue, every scheduler's lane."),
    ("DELETE", "/admin/queue/{request_id}"): Detail("Cancel a request.", status=202),
    ("POST", "/admin/lane/{action}"): Detail("Pause, resume or drain the lane.", status=202),
    ("GET", "/admin/dlq"): Detail(
        "The dead-letter queue's depth and its first jobs.",
        query=(Param("limit", _int(0, 100), "How many jobs to show."),),
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
            Param("limit", _int(1, MAX_LIST), "How many to list."),
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
    ("GET", "/admin/audit"): Detail(
        "The audit log of admin actions, newest first.",
        query=(
            Param("limit", _int(1, MAX_LIST), "How many entries."),
            OFFSET,
            Param("actor", {"type": "string", "maxLength": 256}, "Only this key id's actions."),
        ),
    ),
    ("POST", "/v1/chat/completions"): Detail(
        "OpenAI chat completions.",
        "OpenAIChatCompletionRequest",
        headers=QUEUE_HEADERS,
        media=(JSON, SSE),
        errors=GENERATION_ERRORS,
    ),
    ("POST", "/v1/completions"): Detail(
        "OpenAI (legacy) completions.",
        "OpenAICompletionRequest",
        headers=QUEUE_HEADERS,
        media=(JSON, SSE),
        errors=GENERATION_ERRORS,
    ),
    ("POST", "/v1/embeddings"): Detail(
        "OpenAI embeddings.",
        "OpenAIEmbeddingRequest",
        headers=QUEUE_HEADERS,
        errors=GENERATION_ERRORS,
    ),
    ("GET", "/v1/models"): Detail("OpenAI's model list."),
    ("GET", "/v1/models/{model}"): Detail("One model, as OpenAI describes it.", errors={404}),
    ("GET", OPENAPI_PATH): Detail("This document."),
    # Seed 004's conversation API (conversations/).
    ("GET", "/api/models"): Detail("The backend's model names, their count, its address."),
    ("GET", "/api/config"): Detail("The server's effective, non-secret settings."),
    ("GET", "/api/conversations"): Detail(
        "The caller's conversations, most recently updated first.",
        query=(
            Param("limit", _int(1, SESSION_LIST_MAX), "How many to list."),
            OFFSET,
            Param("archived", FLAG, "The archived conversations instead of the active ones."),
        ),
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


@dataclass(frozen=True)
class OpsRoute:
    path: str
    access: str
    summary: str
    media: tuple[str, ...]
    errors: Set[int] = field(default_factory=frozenset)


# Served by corral_common.ops on every service, registered without a surface.
OPS_ROUTES = (
    OpsRoute("/health", "open", "Health of the gateway and what it depends on.", (JSON,), {503}),
    OpsRoute("/ready", "open", "Whether the gateway can serve requests.", (JSON,), {503}),
    OpsRoute("/metrics", "admin", "Prometheus metrics.", (TEXT,), frozenset({401, 403, 429, 503})),
)
TAGS = [
    {"name": "ollama", "description": "Ollama's native API, answered as Ollama answers."},
    {"name": "corral", "description": "Corral's own API: sessions, search, the queue."},
    {"name": "admin", "description": "The operators' API: models, the lane, keys, audit."},
    {"name": "openai", "description": "The OpenAI-compatible API, as Ollama serves it."},
    {
        "name": "conversations",
        "description": "Seed 004's conversation API (llama-chat): conversations are sessions.",
    },
    {"name": "ops", "description": "Health, readiness and metrics, as every service serves."},
]


# --- request bodies -------------------------------------------------------------------------


def go_schema(go_type: GoType) -> dict[str, Any]:
    """The JSON Schema of what the native decoder (validation.decode_body) takes for a Go type:
    Go leaves a field at its zero value on `null`, so a nullable type also takes null."""
    if go_type is RAW:
        return {}  # json.RawMessage: any JSON value
    schema = _go_value(go_type)
    return {"anyOf": [schema, {"type": "null"}]} if go_type.nullable else schema


def _go_value(go_type: GoType) -> dict[str, Any]:
    if go_type is DURATION:
        return {"anyOf": [{"type": "string", "pattern": GO_DURATION}, {"type": "number"}]}
    if go_type is THINK:
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}]}
    if go_type is INT:
        return _int(-(2**63), 2**63 - 1)
    types = sorted("boolean" if kind == "bool" else kind for kind in go_type.kinds)
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    if go_type.base64:
        schema["contentEncoding"] = "base64"
    if go_type.item is not None:
        schema["items"] = go_schema(go_type.item)
    if go_type.fields is not None:
        schema["properties"] = {
            name: go_schema(field_type) for name, field_type in go_type.fields.items()
        }
    return schema


# The fields each native request needs (the handlers refuse a body without them).
OLLAMA_BODIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "OllamaChatRequest": ("chat", ("model",)),
    "OllamaGenerateRequest": ("generate", ("model",)),
    "OllamaEmbedRequest": ("embed", ("model", "input")),
    "OllamaEmbeddingRequest": ("embeddings", ("model",)),
    "OllamaShowRequest": ("show", ("model",)),
    "OllamaDeleteRequest": ("delete", ("model",)),
    "OllamaCopyRequest": ("copy", ("source", "destination")),
    "OllamaPullRequest": ("pull", ("model",)),
    "OllamaPushRequest": ("push", ("model",)),
    "OllamaCreateRequest": ("create", ("model",)),
}
# Corral's extension fields, read by the native generation routes (extensions.py).
EXTENSION_FIELDS = {
    "session_id": CLIENT_ID,
    "request_id": CLIENT_ID,
    "priority": PRIORITY,
}
# The session fields (session_fields.py); null is "not given", as Go's zero value.
EXTENSION_FIELDS |= {
    "max_history_length": {
        "anyOf": [_int(0, MAX_HISTORY_LENGTH), {"type": "null"}],
        "description": "At most this many stored history messages go with the new ones.",
    },
    "metadata": {
        "anyOf": [{"type": "object"}, {"type": "null"}],
        "description": f"Kept with the turn (at most {MAX_METADATA_BYTES} bytes of JSON).",
    },
}
EXTENDED = ("chat", "generate", "embed", "embeddings")
OPENAI_BODIES: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "ChatCompletionRequest": (ChatCompletionRequest, ("model", "messages")),
    "CompletionRequest": (CompletionRequest, ("model", "prompt")),
    "EmbeddingRequest": (EmbeddingRequest, ("model", "input")),
}


def ollama_body(kind: str, required: tuple[str, ...]) -> dict[str, Any]:
    request_type = REQUEST_TYPES[kind]
    properties = dict(_go_value(request_type)["properties"])
    if "top_logprobs" in properties:
        properties["top_logprobs"] = {"anyOf": [_int(0, 20), {"type": "null"}]}
    if kind in EXTENDED:
        properties.update(EXTENSION_FIELDS)
    return {
        "type": "object",
        "description": f"Ollama's `api.{request_type.struct}`.",
        "properties": properties,
        "required": list(required),
    }


def openai_bodies() -> dict[str, Any]:
    """The `/v1` bodies: the pydantic models the surface decodes with, and what they refer to,
    each named `OpenAI<Model>`."""
    mode: JsonSchemaMode = "validation"
    models = [(model, mode) for model, _ in OPENAI_BODIES.values()]
    _, schema = models_json_schema(
        models, by_alias=True, ref_template="#/components/schemas/OpenAI{model}"
    )
    found: dict[str, Any] = {f"OpenAI{name}": body for name, body in schema["$defs"].items()}
    for name, (_, required) in OPENAI_BODIES.items():
        found[f"OpenAI{name}"]["required"] = list(required)
    return found


def key_schemas() -> dict[str, Any]:
    limit = {"anyOf": [_int(0, 1_000_000_000), {"type": "null"}]}
    return {
        "KeyLimits": {
            "type": "object",
            "description": "Per-key overrides of the gateway's limits: null = the default, "
            "0 = no limit.",
            "additionalProperties": False,
            "properties": {
                name: limit
                for name in (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "tokens_per_day",
                    "max_queued",
                )
            },
        },
        "KeyCreateRequest": {
            "type": "object",
            "required": ["scope"],
            "additionalProperties": False,
            "properties": {
                "scope": {"type": "string", "enum": list(SCOPES)},
                "label": {"anyOf": [{"type": "string", "maxLength": MAX_LABEL}, {"type": "null"}]},
                "expires_at": {
                    "anyOf": [
                        {"type": "string", "format": "date-time"},
                        {"type": "number"},
                        {"type": "null"},
                    ],
                    "description": "When the key stops working, in the future: RFC 3339 with "
                    "an offset, or epoch seconds.",
                },
                "owner": {
                    "anyOf": [
                        {"type": "string", "minLength": 1, "maxLength": 256},
                        {"type": "null"},
                    ],
                    "description": "Whose key it is: keys of one owner share their sessions.",
                },
                "max_priority": {"anyOf": [PRIORITY, {"type": "null"}]},
                "limits": {"$ref": "#/components/schemas/KeyLimits"},
            },
        },
    }


def conversation_schemas() -> dict[str, Any]:
    """Seed 004's bodies (conversations/): the shared `/api/chat` takes Ollama's chat or a
    conversation message."""
    title = {"type": "string", "minLength": 1, "description": "At most 200 characters."}
    conversation_id = {
        "anyOf": [
            _int(0, 2**63 - 1),
            {**CLIENT_ID, "description": "A session id, as a string."},
        ]
    }
    return {
        "ConversationCreate": {
            "type": "object",
            "required": ["title", "model"],
            "properties": {"title": title, "model": MODEL_NAME},
        },
        "ConversationRename": {
            "type": "object",
            "required": ["title"],
            "properties": {"title": title},
        },
        "ConversationMessage": {
            "type": "object",
            "description": "A message to a conversation; `model` defaults to the "
            "conversation's own, `stream` to false.",
            "required": ["conversation_id", "message"],
            "properties": {
                "conversation_id": conversation_id,
                "message": {"type": "string", "minLength": 1, "pattern": r"\S"},
                "model": {"anyOf": [MODEL_NAME, {"type": "null"}]},
                "stream": {"type": ["boolean", "null"]},
                "options": {"type": ["object", "null"]},
                "request_id": CLIENT_ID,
                "priority": PRIORITY,
            },
        },
        "ChatRequest": {
            "anyOf": [
                {"$ref": "#/components/schemas/OllamaChatRequest"},
                {"$ref": "#/components/schemas/ConversationMessage"},
            ]
        },
    }


def session_schemas() -> dict[str, Any]:
    """POST /sessions and POST /sessions/import (corral/session_routes.py). The import says no
    more than the store checks: an export's other fields are ignored, times are whatever
    pydantic reads as one."""
    nullable_text = {"type": ["string", "null"]}
    message = {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
            "content": {"type": "string"},
        },
    }
    turn = {
        "type": "object",
        "required": ["id", "model", "messages", "asked_at", "answered_at"],
        "properties": {
            "id": CLIENT_ID,
            "model": {"type": "string"},
            "kind": {"type": "string", "enum": ["chat", "generate"]},
            "messages": {"type": "array", "minItems": 1, "items": message},
            "stats": {"type": "object"},
            "metadata": {"type": ["object", "null"]},
        },
    }
    return {
        "SessionCreate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"title": nullable_text, "system_prompt": nullable_text},
        },
        "SessionImport": {
            "type": "object",
            "description": "What GET /sessions/{session_id}/export answers.",
            "required": ["session"],
            "properties": {
                "format": {"type": "string", "enum": [EXPORT_FORMAT]},
                "session": {
                    "type": "object",
                    "required": ["session_id"],
                    "properties": {
                        "session_id": CLIENT_ID,
                        "title": nullable_text,
                        "system_prompt": nullable_text,
                    },
                },
                "turns": {"type": "array", "maxItems": MAX_IMPORT_TURNS, "items": turn},
            },
        },
    }


def error_schemas() -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "ConversationError": {
            "type": "object",
            "required": ["error"],
            "description": "Seed 004's error: `code` VALIDATION_ERROR (with `field`), "
            "NOT_FOUND (with `resource` and `id`), BACKEND_ERROR, or Corral's error type in "
            "capitals; `retry_after` in seconds when the client should come back later.",
            "properties": {
                "success": {"type": "boolean"},
                "error": text,
                "code": text,
                "details": {"type": "object"},
                "field": text,
                "resource": text,
                "retry_after": {"type": "integer"},
            },
        },
        "OllamaError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": text},
        },
        "CorralError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {
                        "type": text,
                        "message": text,
                        "details": {"type": "object"},
                        # Whenever the answer carries Retry-After, the same seconds.
                        "retry_after": {"type": "integer", "minimum": 0},
                    },
                }
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": text,
                        "type": text,
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
    }


def component_schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        name: ollama_body(kind, required) for name, (kind, required) in OLLAMA_BODIES.items()
    }
    schemas["ProviderPullRequest"] = {
        "type": "object",
        "required": ["model"],
        "properties": {"model": MODEL_NAME, "name": MODEL_NAME},
    }
    schemas["SessionRename"] = {
        "type": "object",
        "required": ["title"],
        "properties": {"title": {"type": "string"}},
    }
    schemas.update(session_schemas())
    schemas.update(openai_bodies())
    schemas.update(key_schemas())
    schemas.update(conversation_schemas())
    schemas.update(error_schemas())
    return schemas


# --- operations -----------------------------------------------------------------------------

_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def route_template(route: web.AbstractRoute) -> str | None:
    """The route's path as OpenAPI writes it: `{name}`, without aiohttp's regex."""
    if route.resource is None:
        return None
    info = route.resource.get_info()
    template = info.get("formatter") or info.get("path")
    return _PARAMETER.sub(r"{\1}", str(template)) if template else None


def summary_of(handler: object, detail: Detail | None, method: str, path: str) -> str:
    """The table's summary, else the first sentence of the handler's docstring."""
    if detail is not None:
        return detail.summary
    doc = inspect.getdoc(handler)
    if doc:
        return doc.split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")
    return f"{method} {path}"


def _parameter(location: str, param: Param) -> dict[str, Any]:
    found: dict[str, Any] = {"name": param.name, "in": location, "schema": param.schema}
    if param.description:
        found["description"] = param.description
    if param.required:
        found["required"] = True
    return found


def _error_statuses(access: str, detail: Detail | None, has_input: bool) -> set[int]:
    statuses = set(detail.errors if detail is not None else ())
    if detail is not None and detail.body is not None:
        statuses.add(413)  # the body is over CORRAL_MAX_BODY_BYTES
    if access != "open":
        statuses |= {401, 429, 503}
    if access == "admin":
        statuses.add(403)
    if has_input:
        statuses.add(400)
    return statuses


def _responses(
    successes: tuple[int, ...], media: tuple[str, ...], errors: set[int], error_schema: str
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in successes:
        success: dict[str, Any] = {"description": SUCCESS_DESCRIPTIONS.get(status, "OK")}
        if media:
            success["content"] = {kind: {"schema": {}} for kind in media}
        responses[str(status)] = success
    for code in sorted(errors):
        answer: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS.get(code, "Error"),
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{error_schema}"}}},
        }
        if code == 401:
            answer["headers"] = {"WWW-Authenticate": {"$ref": "#/components/headers/Auth"}}
        if code == 429:
            answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(code)] = answer
    return responses


def _operation(
    method: str, path: str, surface: str, access: str, handler: object
) -> dict[str, Any]:
    detail = DETAILS.get((method, path))
    names = _PARAMETER.findall(path)
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS.get(name, {"type": "string", "minLength": 1}),
        }
        for name in names
    ]
    if detail is not None:
        parameters += [_parameter("query", param) for param in detail.query]
        parameters += [_parameter("header", param) for param in detail.headers]
    body = detail.body if detail is not None else None
    has_input = bool(parameters) or body is not None
    operation: dict[str, Any] = {
        "tags": [surface],
        "summary": summary_of(handler, detail, method, path),
    }
    description = inspect.getdoc(handler)
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        if body == BINARY:
            content = {BINARY: {"schema": {"type": "string", "contentMediaType": BINARY}}}
        else:
            content = {JSON: {"schema": {"$ref": f"#/components/schemas/{body}"}}}
        operation["requestBody"] = {
            "required": detail.body_required if detail else True,
            "content": content,
        }
    successes = (detail.status, *detail.also) if detail is not None else (200,)
    media = detail.media if detail is not None else (JSON,)
    if method == "HEAD":
        media = ()
    errors = _error_statuses(access, detail, has_input)
    error_schema = ERROR_SCHEMAS.get(surface, "CorralError")
    operation["responses"] = _responses(successes, media, errors, error_schema)
    operation["security"] = [] if access == "open" else SECURITY
    operation["x-corral-access"] = access
    return operation


def build_document(router: web.UrlDispatcher) -> dict[str, Any]:
    """The OpenAPI document of every route on `router`."""
    found: list[tuple[str, str, str, str, object, str]] = []
    get_paths: set[str] = set()
    for route in router.routes():
        meta = route_meta(route.handler)
        path = route_template(route)
        if meta is None or path is None:
            continue
        if route.method == "GET":
            get_paths.add(path)
        name = getattr(meta.handler, "__name__", "handler")
        found.append((route.method, path, meta.surface, meta.access, meta.handler, name))
    served = {route_template(route) for route in router.routes()}
    # aiohttp's add_get also registers HEAD; only a HEAD of its own is an operation.
    found = [entry for entry in found if not (entry[0] == "HEAD" and entry[1] in get_paths)]
    ids = [f"{surface}_{name}" for _, _, surface, _, _, name in found]
    paths: dict[str, dict[str, Any]] = {}
    for (method, path, surface, access, handler, _), base in zip(found, ids, strict=True):
        operation = _operation(method, path, surface, access, handler)
        shared = ids.count(base) > 1
        operation["operationId"] = f"{base}_{method.lower()}" if shared else base
        paths.setdefault(path, {})[method.lower()] = operation
    for ops in OPS_ROUTES:
        if ops.path not in served:
            continue
        operation = {
            "tags": ["ops"],
            "summary": ops.summary,
            "operationId": f"ops_{ops.path.strip('/')}",
            "responses": _responses((200,), ops.media, set(ops.errors), "CorralError"),
            "security": [] if ops.access == "open" else SECURITY,
            "x-corral-access": ops.access,
        }
        paths.setdefault(ops.path, {})["get"] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Corral",
            "version": _version(),
            "description": "A shared, queue-aware, session-keeping front for one Ollama "
            "server. Keys go in `Authorization: Bearer <key>` or `X-API-Key: <key>`; "
            "`x-corral-access` says what each operation asks of its caller.",
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`crl_...`, or the operator's key).",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "headers": {
                "Auth": {
                    "description": 'The scheme to authenticate with: `Bearer realm="corral"`.',
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds until the limit's window ends.",
                    "schema": {"type": "integer"},
                },
            },
        },
        "security": SECURITY,
    }


def _version() -> str:
    try:
        return metadata.version("corral-gateway")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve the document of `router`'s routes at OPENAPI_PATH, on the Corral surface. Built
    at the first request, when every route is registered, and kept: routes do not change once
    the app runs."""
    built: list[bytes] = []

    async def openapi_document(_: web.Request) -> web.Response:
        """This document."""
        if not built:
            built.append(orjson.dumps(build_document(router)))
        return web.Response(body=built[0], content_type=JSON)

    CORRAL.get(router, OPENAPI_PATH, openapi_document, "open")
