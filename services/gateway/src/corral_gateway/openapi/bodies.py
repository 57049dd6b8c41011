"""The request bodies of the surfaces other than Ollama's native one (native_bodies.py): the `/v1`
bodies are the pydantic models the OpenAI surface decodes with; Corral's sessions, the
operators' keys and llama-chat's conversations say what their handlers check."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from corral_common.contracts.identity import MAX_LABEL, SCOPES
from corral_common.contracts.session_store import EXPORT_FORMAT, MAX_IMPORT_TURNS
from corral_gateway.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from corral_gateway.openapi.schema_parts import (
    CLIENT_ID,
    MODEL_NAME,
    PRIORITY,
    STRING,
    Schema,
    int_range,
    nullable,
    object_schema,
    ref,
)

OPENAI_BODIES: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "ChatCompletionRequest": (ChatCompletionRequest, ("model", "messages")),
    "CompletionRequest": (CompletionRequest, ("model", "prompt")),
    "EmbeddingRequest": (EmbeddingRequest, ("model", "input")),
}


def openai_bodies() -> dict[str, Schema]:
    """The `/v1` bodies: the pydantic models the surface decodes with, and what they refer to,
    each named `OpenAI<Model>`."""
    mode: JsonSchemaMode = "validation"
    models = [(model, mode) for model, _ in OPENAI_BODIES.values()]
    _, schema = models_json_schema(
        models, by_alias=True, ref_template="#/components/schemas/OpenAI{model}"
    )
    found: dict[str, Schema] = {f"OpenAI{name}": body for name, body in schema["$defs"].items()}
    for name, (_, required) in OPENAI_BODIES.items():
        found[f"OpenAI{name}"]["required"] = list(required)
    return found


def corral_bodies() -> dict[str, Schema]:
    """The provider pull and the session bodies (corral/session_routes.py). The import says no
    more than the store checks: an export's other fields are ignored, times are whatever
    pydantic reads as one."""
    nullable_text = {"type": ["string", "null"]}
    message = object_schema(
        {
            "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
            "content": STRING,
        },
        "role",
    )
    turn = object_schema(
        {
            "id": CLIENT_ID,
            "model": STRING,
            "kind": {"type": "string", "enum": ["chat", "generate"]},
            "messages": {"type": "array", "minItems": 1, "items": message},
            "stats": {"type": "object"},
            "metadata": {"type": ["object", "null"]},
        },
        "id",
        "model",
        "messages",
        "asked_at",
        "answered_at",
    )
    session = object_schema(
        {"session_id": CLIENT_ID, "title": nullable_text, "system_prompt": nullable_text},
        "session_id",
    )
    return {
        "ProviderPullRequest": object_schema({"model": MODEL_NAME, "name": MODEL_NAME}, "model"),
        "SessionRename": object_schema({"title": STRING}, "title"),
        "SessionCreate": object_schema(
            {"title": nullable_text, "system_prompt": nullable_text}, additionalProperties=False
        ),
        "SessionImport": object_schema(
            {
                "format": {"type": "string", "enum": [EXPORT_FORMAT]},
                "session": session,
                "turns": {"type": "array", "maxItems": MAX_IMPORT_TURNS, "items": turn},
            },
            "session",
            description="What GET /sessions/{session_id}/export answers.",
        ),
    }


def key_bodies() -> dict[str, Schema]:
    """The operators' key creation (admin/key_routes.py)."""
    limit = nullable(int_range(0, 1_000_000_000))
    limits = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_queued")
    return {
        "KeyLimits": object_schema(
            {name: limit for name in limits},
            description="Per-key overrides of the gateway's limits: null = the default, "
            "0 = no limit.",
            additionalProperties=False,
        ),
        "KeyCreateRequest": object_schema(
            {
                "scope": {"type": "string", "enum": list(SCOPES)},
                "label": nullable({"type": "string", "maxLength": MAX_LABEL}),
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
                    **nullable({"type": "string", "minLength": 1, "maxLength": 256}),
                    "description": "Whose key it is: keys of one owner share their sessions.",
                },
                "max_priority": nullable(PRIORITY),
                "limits": ref("KeyLimits"),
            },
            "scope",
            additionalProperties=False,
        ),
    }


def conversation_bodies() -> dict[str, Schema]:
    """Llama-chat's bodies (conversations/): the shared `/api/chat` takes Ollama's chat or a
    conversation message."""
    title = {"type": "string", "minLength": 1, "description": "At most 200 characters."}
    conversation_id = {
        "anyOf": [
            int_range(0, 2**63 - 1),
            {**CLIENT_ID, "description": "A session id, as a string."},
        ]
    }
    return {
        "ConversationCreate": object_schema(
            {"title": title, "model": MODEL_NAME}, "title", "model"
        ),
        "ConversationRename": object_schema({"title": title}, "title"),
        "ConversationMessage": object_schema(
            {
                "conversation_id": conversation_id,
                "message": {"type": "string", "minLength": 1, "pattern": r"\S"},
                "model": nullable(MODEL_NAME),
                "stream": {"type": ["boolean", "null"]},
                "options": {"type": ["object", "null"]},
                "request_id": CLIENT_ID,
                "priority": PRIORITY,
            },
            "conversation_id",
            "message",
            description="A message to a conversation; `model` defaults to the "
            "conversation's own, `stream` to false.",
        ),
        "ChatRequest": {"anyOf": [ref("OllamaChatRequest"), ref("ConversationMessage")]},
    }
