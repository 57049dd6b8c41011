"""The pieces the document's schemas are built from: media types, small schema builders, and the
value schemas more than one route or body uses (ids, model names, priorities, flags)."""

from __future__ import annotations

from typing import Any

from corral_common.ids import CLIENT_ID_MAX_CHARS
from corral_common.messages import PRIORITIES
from corral_gateway.query_params import FLAGS

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain"
BINARY = "application/octet-stream"

Schema = dict[str, Any]


def int_range(minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def nullable(schema: Schema) -> Schema:
    """`schema`, or null (Go's zero value: "not given")."""
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> Schema:
    """A reference to one of the document's component schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def object_schema(properties: Schema, *required: str, **keywords: Any) -> Schema:
    """A JSON object with `properties`, needing `required`, with other keywords (`description`,
    `additionalProperties`) beside them."""
    schema: Schema = {"type": "object"}
    if required:
        schema["required"] = list(required)
    return {**schema, **keywords, "properties": properties}


STRING: Schema = {"type": "string"}
PRIORITY: Schema = {"type": "string", "enum": list(PRIORITIES)}
CLIENT_ID: Schema = {
    "type": "string",
    "pattern": f"^[A-Za-z0-9_-]{{1,{CLIENT_ID_MAX_CHARS}}}$",
    "description": f"1 to {CLIENT_ID_MAX_CHARS} letters, digits, '-' or '_'.",
}
GO_DURATION = r"^(0|[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+)$"  # time.ParseDuration
MODEL_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "description": "A model name, `[host/][namespace/]model[:tag]`.",
}
KEY_ID: Schema = {"type": "string", "pattern": "^key_[0-9a-f]{1,64}$"}
DIGEST: Schema = {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"}
FLAG: Schema = {"type": "string", "enum": list(FLAGS)}
SECONDS: Schema = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
