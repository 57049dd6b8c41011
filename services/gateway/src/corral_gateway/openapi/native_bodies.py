"""The native Ollama request bodies, derived from `validation.REQUEST_TYPES` (the Go types
Ollama's handlers decode into), so the document states the types the gateway really checks. Go
takes `null` for any field (its zero value), and so does the gateway; the schemas say so. The
generation bodies also take Corral's extension fields (extensions.py, session_fields.py)."""

from __future__ import annotations

from corral_common.contracts.session_store import MAX_HISTORY_LENGTH, MAX_METADATA_BYTES
from corral_gateway.openapi.schema_parts import (
    CLIENT_ID,
    GO_DURATION,
    PRIORITY,
    Schema,
    int_range,
    nullable,
    object_schema,
)
from corral_gateway.validation import DURATION, INT, RAW, REQUEST_TYPES, THINK, THINK_LEVELS, GoType

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
EXTENSION_FIELDS: dict[str, Schema] = {
    "session_id": CLIENT_ID,
    "request_id": CLIENT_ID,
    "priority": PRIORITY,
    # The session fields (session_fields.py); null is "not given", as Go's zero value.
    "max_history_length": {
        **nullable(int_range(0, MAX_HISTORY_LENGTH)),
        "description": "At most this many stored history messages go with the new ones.",
    },
    "metadata": {
        **nullable({"type": "object"}),
        "description": f"Kept with the turn (at most {MAX_METADATA_BYTES} bytes of JSON).",
    },
}
EXTENDED = ("chat", "generate", "embed", "embeddings")


def go_schema(go_type: GoType) -> Schema:
    """The JSON Schema of what the native decoder (validation.decode_body) takes for a Go type:
    Go leaves a field at its zero value on `null`, so a nullable type also takes null."""
    if go_type is RAW:
        return {}  # json.RawMessage: any JSON value
    schema = _go_value(go_type)
    return nullable(schema) if go_type.nullable else schema


def _go_value(go_type: GoType) -> Schema:
    if go_type is DURATION:
        return {"anyOf": [{"type": "string", "pattern": GO_DURATION}, {"type": "number"}]}
    if go_type is THINK:
        return {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}]}
    if go_type is INT:
        return int_range(-(2**63), 2**63 - 1)
    types = sorted("boolean" if kind == "bool" else kind for kind in go_type.kinds)
    schema: Schema = {"type": types[0] if len(types) == 1 else types}
    if go_type.base64:
        schema["contentEncoding"] = "base64"
    if go_type.item is not None:
        schema["items"] = go_schema(go_type.item)
    if go_type.fields is not None:
        schema["properties"] = {
            name: go_schema(field_type) for name, field_type in go_type.fields.items()
        }
    return schema


def ollama_body(kind: str, required: tuple[str, ...]) -> Schema:
    request_type = REQUEST_TYPES[kind]
    properties = dict(_go_value(request_type)["properties"])
    if "top_logprobs" in properties:
        properties["top_logprobs"] = nullable(int_range(0, 20))
    if kind in EXTENDED:
        properties.update(EXTENSION_FIELDS)
    return object_schema(
        properties, *required, description=f"Ollama's `api.{request_type.struct}`."
    )


def native_bodies() -> dict[str, Schema]:
    return {name: ollama_body(kind, required) for name, (kind, required) in OLLAMA_BODIES.items()}
