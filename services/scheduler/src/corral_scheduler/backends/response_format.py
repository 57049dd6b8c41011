"""Ollama's `format` as an OpenAI-compatible server's `response_format`, in the two shapes such
servers take a JSON schema in.

- OpenAI's own: `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. llama.cpp's
  `llama-server` (`oaicompat_chat_params_parse` in tools/server/server-common.cpp reads
  `response_format.json_schema.schema`), vLLM and LM Studio take it; sent first.
- The llama family's: `{"type": "json_object", "schema": ...}`. llama-cpp-python's server (0.3.x)
  knows no other: its `ChatCompletionRequestResponseFormat` (llama_types.py) is
  `type: Literal["text", "json_object"]` with an optional `schema`, and it refuses `json_schema`
  with a 500 whose text is pydantic's dump (its own file paths included). llama-server reads
  `response_format.schema` for `json_object` too. vLLM would take it but drop the schema (an
  unknown field there), which is why it is not the one sent first.

`format: "json"` goes as `json_object` with the schema `{"type": "object"}`: llama-server turns a
`json_object` without a schema into the empty schema, which recent builds take as no constraint
at all; with one, both llama servers constrain the answer to an object, as Ollama's JSON grammar
does (its root is an object). A server without schemas (vLLM) ignores the extra field.
"""

from __future__ import annotations

from typing import Any

from corral_common.errors import CorralError

SCHEMA_NAME = "response"
# Ollama's "json": any object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def response_format(value: Any) -> dict[str, Any] | None:
    """Ollama's `format` ("json" or a JSON schema) in OpenAI's shape; None for no format."""
    if value == "json":
        return {"type": "json_object", "schema": ANY_OBJECT}
    if isinstance(value, dict):
        return {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": value, "strict": True},
        }
    return None


def schema_in_json_object(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request with its `json_schema` response format in the llama family's shape, or None
    when it has none (nothing to send differently)."""
    current = body.get("response_format")
    if not isinstance(current, dict) or current.get("type") != "json_schema":
        return None
    wrapper = current.get("json_schema")
    schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
    return {**body, "response_format": {"type": "json_object", "schema": schema or ANY_OBJECT}}


def refuses_response_format(error: CorralError) -> bool:
    """Whether a server's refusal is about the response format: llama-cpp-python's names the
    field's location (`'loc': ('body', 'response_format', 'type')`), older llama-server builds
    say `response_format type must be one of "text" or "json_object"`."""
    # 502 and 503 are the lane's to retry, whatever they say.
    return error.status not in (502, 503) and "response_format" in error.message
