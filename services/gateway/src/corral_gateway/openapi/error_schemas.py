"""Each surface's error shape (surfaces.py renders them): Ollama `{"error": "<text>"}`, Corral
`{"error": {"type", "message", "details"}}` (the operators' too), OpenAI `{"error": {"message",
"type", "param", "code"}}`, llama-chat's `{"success", "error", "code", ...}`; and what each error
status means, whichever surface answers it."""

from __future__ import annotations

from corral_gateway.openapi.schema_parts import STRING, Schema, object_schema

# Surface (an operation's tag) -> its error schema.
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


def _answer(error: Schema) -> Schema:
    """An error answer: an object whose `error` is `error`."""
    return object_schema({"error": error}, "error")


def error_schemas() -> dict[str, Schema]:
    return {
        "ConversationError": object_schema(
            {
                "success": {"type": "boolean"},
                "error": STRING,
                "code": STRING,
                "details": {"type": "object"},
                "field": STRING,
                "resource": STRING,
                "retry_after": {"type": "integer"},
            },
            "error",
            description="llama-chat's error: `code` VALIDATION_ERROR (with `field`), "
            "NOT_FOUND (with `resource` and `id`), BACKEND_ERROR, or Corral's error type in "
            "capitals; `retry_after` in seconds when the client should come back later.",
        ),
        "OllamaError": _answer(STRING),
        "CorralError": _answer(
            object_schema(
                {
                    "type": STRING,
                    "message": STRING,
                    "details": {"type": "object"},
                    # Whenever the answer carries Retry-After, the same seconds.
                    "retry_after": {"type": "integer", "minimum": 0},
                },
                "type",
                "message",
            )
        ),
        "OpenAIError": _answer(
            object_schema(
                {
                    "message": STRING,
                    "type": STRING,
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "message",
                "type",
            )
        ),
    }
