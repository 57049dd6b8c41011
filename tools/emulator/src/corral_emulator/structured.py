"""Structured output: what the emulator "generates" for `format` and for tool calls.

Deterministic, so tests can compute it: `format: "json"` answers `{"reply": <the usual echo>}`,
a JSON Schema answers an instance built from the schema (every property present, the first
`enum`/`const`/`anyOf` choice, strings from the input text), and a tool call names the
request's first tool with arguments built the same way from its `parameters` schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from corral_emulator.tokens import reply_text, tokenize
from corral_emulator.wire import ApiError

JSON_REPLY_KEY = "reply"
TOOL_CALL_ID_PREFIX = "call_"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
"""Ollama's toolCallId: `call_` and 8 characters from this alphabet (random there, hashed here)."""
_MAX_DEPTH = 8
"""Recursive schemas ($ref to themselves) stop here, with null."""
_MAX_ITEMS = 3
_MAX_NODES = 1000
"""A schema whose properties refer back to it would otherwise grow exponentially with depth."""

_STRING_FORMATS: Mapping[str, str] = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00",
    "email": "echo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class FormatKind:
    NONE = "none"
    JSON = "json"
    SCHEMA = "schema"


def format_kind(value: object) -> str:
    """What the runner makes of `format`; anything else fails as llama_server.go does (500,
    once the model is loaded, before the first token)."""
    if value is None or value == "":
        return FormatKind.NONE
    if value == "json":
        return FormatKind.JSON
    if isinstance(value, dict):
        return FormatKind.SCHEMA
    raw = orjson.dumps(value).decode()
    raise ApiError(
        500,
        f'invalid format: {_go_bytes_quote(raw)}; expected "json" or a valid JSON Schema object',
    )


def formatted_reply(text: str, value: object) -> str | None:
    """The reply text under `format`, or None when no format applies."""
    kind = format_kind(value)
    if kind == FormatKind.NONE:
        return None
    if kind == FormatKind.JSON:
        return orjson.dumps({JSON_REPLY_KEY: reply_text(text)}).decode()
    assert isinstance(value, dict)
    return orjson.dumps(schema_instance(value, reply_text(text))).decode()


def schema_instance(schema: Mapping[str, Any], text: str) -> Any:
    """A value that conforms to `schema`, with `text` wherever a free string goes."""
    return _Builder(schema, text).build(schema, 0)


def tool_call(tool: object, text: str) -> dict[str, Any]:
    """Ollama's `api.ToolCall` for `tool` (an `api.Tool`): id, then function index, name and
    arguments (an object, never a string, on the native API)."""
    function = tool.get("function") if isinstance(tool, dict) else None
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    name = name if isinstance(name, str) else ""
    parameters = function.get("parameters")
    arguments = schema_instance(parameters, text) if isinstance(parameters, dict) else {}
    if not isinstance(arguments, dict):
        arguments = {}
    return {
        "id": tool_call_id(name, arguments),
        "function": {"index": 0, "name": name, "arguments": arguments},
    }


def tool_call_id(name: str, arguments: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps([name, arguments], option=orjson.OPT_SORT_KEYS)).digest()
    return TOOL_CALL_ID_PREFIX + "".join(_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in digest[:8])


def tool_call_token_count(calls: tuple[dict[str, Any], ...]) -> int:
    """What the calls cost in generated tokens (their JSON, as the model would have written it)."""
    return sum(len(tokenize(orjson.dumps(call["function"]).decode())) for call in calls)


class _Builder:
    def __init__(self, root: Mapping[str, Any], text: str) -> None:
        self._root = root
        self._text = text
        self._nodes = 0

    def build(self, schema: object, depth: int) -> Any:
        self._nodes += 1
        if not isinstance(schema, dict) or depth > _MAX_DEPTH or self._nodes > _MAX_NODES:
            return None
        if isinstance(schema.get("$ref"), str):
            return self.build(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [
                    o for o in options if not (isinstance(o, dict) and o.get("type") == "null")
                ]
                return self.build((non_null or options)[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            merged: dict[str, Any] = {}
            for part in all_of:
                value = self.build(part, depth + 1)
                if isinstance(value, dict):
                    merged.update(value)
            return merged
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("integer", "number"):
            return self._number(schema, kind)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, ref: str) -> object:
        # Local references only (`#/$defs/Name`, `#/definitions/Name`), as grammars support.
        node: object = self._root
        for part in ref.removeprefix("#").strip("/").split("/"):
            if not part:
                continue
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        value = {name: self.build(sub, depth + 1) for name, sub in properties.items()}
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in value:
                value[name] = self._text
        return value

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        count = 1
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")
        if isinstance(min_items, int) and not isinstance(min_items, bool):
            count = max(count, min(min_items, _MAX_ITEMS))
        if isinstance(max_items, int) and not isinstance(max_items, bool):
            count = min(count, max(max_items, 0))
        items = schema.get("items")
        return [self.build(items if isinstance(items, dict) else {}, depth + 1)] * count

    def _number(self, schema: Mapping[str, Any], kind: str) -> int | float:
        value: int | float = len(tokenize(self._text))
        minimum, maximum = schema.get("minimum"), schema.get("maximum")
        if isinstance(minimum, int | float) and not isinstance(minimum, bool):
            value = max(value, minimum)
        if isinstance(maximum, int | float) and not isinstance(maximum, bool):
            value = min(value, maximum)
        return int(value) if kind == "integer" else float(value)

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        value = _STRING_FORMATS.get(fmt, self._text) if isinstance(fmt, str) else self._text
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and not isinstance(max_length, bool):
            value = value[: max(max_length, 0)]
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and not isinstance(min_length, bool):
            value = value.ljust(min_length, ".")
        return value


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k != "null"]
        kind = kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _go_bytes_quote(raw: str) -> str:
    """Go's `%q` of a json.RawMessage: the raw JSON text, quoted and escaped."""
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'
