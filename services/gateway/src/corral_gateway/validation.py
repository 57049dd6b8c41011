"""Request decoding and type checks that answer exactly as Ollama (Go's encoding/json) does.

Ollama clients and tests match on these texts, e.g. `missing request body` or
`json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool`.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from corral_common.clip import clip
from corral_common.jsonutil import MAX_DEPTH, TooDeep, loads_bounded
from corral_gateway.option_types import option_refusal


class OllamaRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OptionTypeError(OllamaRequestError):
    """An option of the wrong type (option_types.py), with Ollama's text and its status, 500
    (`handleScheduleError`); still the client's mistake, for a surface with its own shape."""

    def __init__(self, message: str) -> None:
        super().__init__(500, message)


@dataclass(frozen=True)
class GoType:
    """A Go type as Ollama declares a field: the JSON kinds it accepts and the name Go prints."""

    name: str
    kinds: frozenset[str]
    item: GoType | None = None
    fields: dict[str, GoType] | None = None
    struct: str | None = None
    # Go leaves a field at its zero value on `null`; False where Corral refuses that instead.
    nullable: bool = True
    # A Go []byte: a base64 string.
    base64: bool = False


def _t(name: str, *kinds: str, item: GoType | None = None) -> GoType:
    return GoType(name, frozenset(kinds), item=item)


def _fields(name: str, struct: str, /, **fields: GoType) -> GoType:
    """A nested Go struct (errors name its path from the request struct, as Go 1.24+ does)."""
    return GoType(name, frozenset({"object"}), fields=fields, struct=struct)


STRING = _t("string", "string")
BOOL = _t("bool", "bool")
INT = _t("int", "number")
RAW = _t("json.RawMessage", "string", "number", "bool", "object", "array")
OBJECT = _t("map[string]interface {}", "object")
DURATION = _t("api.Duration", "string", "number")
THINK = _t("api.ThinkValue", "string", "bool")
IMAGES = _t(
    "[]api.ImageData", "array", item=GoType("api.ImageData", frozenset({"string"}), base64=True)
)
TOOL_CALL = _fields(
    "api.ToolCall",
    "ToolCall",
    id=STRING,
    function=_fields(
        "api.ToolCallFunction",
        "ToolCallFunction",
        index=INT,
        name=STRING,
        arguments=_t("api.ToolCallFunctionArguments", "object"),
    ),
)
TOOL = _fields(
    "api.Tool",
    "Tool",
    type=STRING,
    function=_fields(
        "api.ToolFunction",
        "ToolFunction",
        name=STRING,
        description=STRING,
        parameters=_fields(
            "api.ToolFunctionParameters",
            "ToolFunctionParameters",
            type=STRING,
            required=_t("[]string", "array", item=STRING),
            properties=_t("api.ToolPropertiesMap", "object"),
        ),
    ),
)
# A `null` message would be a Go zero Message (no role, no content); Corral refuses it, since a
# session would store it as a turn and no client means it.
MESSAGE = GoType(
    "api.Message",
    frozenset({"object"}),
    struct="Message",
    nullable=False,
    fields={
        "role": STRING,
        "content": STRING,
        "thinking": STRING,
        "images": IMAGES,
        "tool_calls": _t("[]api.ToolCall", "array", item=TOOL_CALL),
        "tool_name": STRING,
        "tool_call_id": STRING,
    },
)
COMMON_FIELDS = {
    "model": STRING,
    "stream": BOOL,
    "format": RAW,
    "keep_alive": DURATION,
    "options": OBJECT,
    "think": THINK,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}


def _struct(struct: str, /, **fields: GoType) -> GoType:
    return GoType(f"api.{struct}", frozenset({"object"}), struct=struct, fields=fields)


# Ollama's PullRequest and PushRequest declare the same fields.
TRANSFER_FIELDS = {
    "model": STRING,
    "name": STRING,
    "insecure": BOOL,
    "username": STRING,
    "password": STRING,
    "stream": BOOL,
}


REQUEST_TYPES: dict[str, GoType] = {
    "chat": GoType(
        "api.ChatRequest",
        frozenset({"object"}),
        struct="ChatRequest",
        fields={
            **COMMON_FIELDS,
            "messages": _t("[]api.Message", "array", item=MESSAGE),
            "tools": _t("api.Tools", "array", item=TOOL),
        },
    ),
    "generate": GoType(
        "api.GenerateRequest",
        frozenset({"object"}),
        struct="GenerateRequest",
        fields={
            **COMMON_FIELDS,
            "prompt": STRING,
            "suffix": STRING,
            "system": STRING,
            "template": STRING,
            "context": _t("[]int", "array", item=INT),
            "raw": BOOL,
            "images": IMAGES,
        },
    ),
    "embed": _struct(
        "EmbedRequest",
        model=STRING,
        input=RAW,
        truncate=BOOL,
        dimensions=INT,
        keep_alive=DURATION,
        options=OBJECT,
    ),
    "embeddings": _struct(
        "EmbeddingRequest", model=STRING, prompt=STRING, keep_alive=DURATION, options=OBJECT
    ),
    "pull": _struct("PullRequest", **TRANSFER_FIELDS),
    "push": _struct("PushRequest", **TRANSFER_FIELDS),
    "delete": _struct("DeleteRequest", model=STRING, name=STRING),
    "copy": _struct("CopyRequest", source=STRING, destination=STRING),
    "create": _struct(
        "CreateRequest",
        model=STRING,
        name=STRING,
        stream=BOOL,
        quantize=STRING,
        quantization=STRING,
        files=_t("map[string]string", "object"),
        adapters=_t("map[string]string", "object"),
        template=STRING,
        license=RAW,
        system=STRING,
        parameters=OBJECT,
        messages=_t("[]api.Message", "array", item=MESSAGE),
        renderer=STRING,
        parser=STRING,
        requires=STRING,
        **{"from": STRING},  # a Python keyword, hence spelled as a mapping
    ),
    "show": _struct(
        "ShowRequest",
        model=STRING,
        name=STRING,
        system=STRING,
        template=STRING,
        verbose=BOOL,
        options=OBJECT,
    ),
}

THINK_LEVELS = ("high", "medium", "low", "max")
THINK_RULE = '"high", "medium", "low", "max", true, or false'
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_BASE64_BAD = re.compile(r"[^A-Za-z0-9+/=\r\n]")
# Go's int is 64 bits on every platform Ollama ships for.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
TOO_DEEP_MESSAGE = f"exceeded max depth: Corral accepts at most {MAX_DEPTH} levels of JSON nesting"


def decode_body(raw: bytes, kind: str) -> dict[str, Any]:
    """The request body as Ollama's handler for `kind` (a REQUEST_TYPES key) would decode it."""
    if not raw.strip():
        raise OllamaRequestError(400, "missing request body")
    request_type = REQUEST_TYPES[kind]
    try:
        value = loads_bounded(raw)
    except TooDeep as exc:
        # Go's own decoder stops at 10000 levels with "exceeded max depth"; Corral stops far
        # sooner (see corral_common.jsonutil), before anything reaches the broker.
        raise OllamaRequestError(400, TOO_DEEP_MESSAGE) from exc
    except orjson.JSONDecodeError as exc:
        raise OllamaRequestError(400, _decode_message(exc, raw, request_type)) from exc
    if value is None:
        # A bare `null` is no error to Go's decoder: it leaves the request struct at its zero
        # value, and the handler judges an empty request ("model is required" ...).
        return {}
    if not isinstance(value, dict):
        raise OllamaRequestError(
            400, f"json: cannot unmarshal {_kind(value)} into Go value of type {request_type.name}"
        )
    _check_struct(value, request_type, request_type.struct or "")
    _check_values(value, request_type)
    refusal = option_refusal(value, kind)
    if refusal is not None:
        raise OptionTypeError(refusal)
    return value


def text_refusal(exc: orjson.JSONDecodeError) -> str | None:
    """Why a body's text was refused, when it was (every surface words it so): bytes that are
    not UTF-8, or an escape of half a surrogate pair. orjson says "surrogates not allowed"
    of any invalid UTF-8, so that case is told first."""
    text = str(exc)
    if "not valid UTF-8" in text:
        return "invalid request body: not valid UTF-8"
    if "surrogate" in text:
        return "invalid request body: lone surrogate in a JSON string (text must be valid UTF-8)"
    return None


def _decode_message(exc: orjson.JSONDecodeError, raw: bytes, request_type: GoType) -> str:
    refusal = text_refusal(exc)
    if refusal is not None:
        return refusal
    text = str(exc)
    if "infinity" in text:
        return _overflow_message(raw, exc.pos, request_type)
    if exc.pos >= len(raw.rstrip()):
        return "unexpected EOF"
    char = raw[exc.pos : exc.pos + 1].decode(errors="replace")
    return f"invalid character {char!r} looking for beginning of value"


@dataclass(frozen=True)
class _Overflow:
    """A number literal too large for a float64, kept as written."""

    literal: str


def _overflow_message(raw: bytes, pos: int, request_type: GoType) -> str:
    """Go's text for a number no Go number type holds, naming the field it was sent in.

    orjson stops at the first such number without saying where it sits, so the body is decoded
    once more (only on this error path) with the standard library, keeping such literals."""
    found = _NUMBER.match(raw, pos)
    literal = clip(found.group().decode() if found else "number")

    def parse_float(text: str) -> float | _Overflow:
        number = float(text)
        return _Overflow(text) if math.isinf(number) else number

    def refuse_constant(text: str) -> None:
        raise ValueError(text)

    generic = f"json: cannot unmarshal number {literal} into Go value of type float64"
    try:
        value = json.loads(raw, parse_float=parse_float, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return generic
    if not isinstance(value, dict):
        return f"json: cannot unmarshal number into Go value of type {request_type.name}"
    try:
        _check_struct(value, request_type, request_type.struct or "")
        # Elsewhere (options, format, fields Go skips unread) Corral still forwards the value,
        # so such a number is refused there too, named by its top-level field.
        for key, item in value.items():
            _check_overflow(item, f"{request_type.struct}.{key}", "float64")
    except OllamaRequestError as exc:
        return exc.message
    return generic


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, _Overflow)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number_text(value: Any) -> str:
    return clip(value.literal if isinstance(value, _Overflow) else repr(value))


def _field_error(kind: str, path: str, type_name: str) -> OllamaRequestError:
    struct, _, field = path.partition(".")
    return OllamaRequestError(
        400,
        f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {type_name}",
    )


def _check_struct(value: dict[str, Any], go_type: GoType, path: str) -> None:
    for key, field_type in (go_type.fields or {}).items():
        if key in value:
            _check_value(value[key], field_type, f"{path}.{key}")


def _check_overflow(value: Any, path: str, type_name: str) -> None:
    if isinstance(value, _Overflow):
        raise _field_error(f"number {_number_text(value)}", path, type_name)
    if isinstance(value, list):
        for item in value:
            _check_overflow(item, path, type_name)
    elif isinstance(value, dict):
        for item in value.values():
            _check_overflow(item, path, type_name)


def _check_value(value: Any, go_type: GoType, path: str) -> None:
    if value is None:  # JSON null leaves a Go field at its zero value
        if not go_type.nullable:
            raise _field_error("null", path, go_type.name)
        return
    kind = _kind(value)
    if kind not in go_type.kinds:
        if go_type is DURATION:
            raise OllamaRequestError(400, f"Unsupported type: '{_GO_ANY_TYPES[kind]}'")
        if go_type is THINK:
            raise OllamaRequestError(400, f"think must be a boolean or string ({THINK_RULE})")
        raise _field_error(kind, path, go_type.name)
    if go_type is INT and not _is_go_int(value):
        # Go parses an int field's literal with ParseInt: fractions, exponents and numbers
        # past 64 bits all fail, and the message quotes the number.
        raise _field_error(f"number {_number_text(value)}", path, go_type.name)
    if isinstance(value, _Overflow):
        raise _field_error(f"number {_number_text(value)}", path, "float64")
    if go_type.base64 and isinstance(value, str):
        _check_base64(value)
    if go_type.item is not None and isinstance(value, list):
        for item in value:
            _check_value(item, go_type.item, path)
    if go_type.fields is not None and isinstance(value, dict):
        _check_struct(value, go_type, path)


# What Go's reflect.TypeOf prints for a JSON value decoded into `any`.
_GO_ANY_TYPES = {
    "bool": "bool",
    "number": "float64",
    "string": "string",
    "array": "[]interface {}",
    "object": "map[string]interface {}",
}


def _is_go_int(value: Any) -> bool:
    return isinstance(value, int) and _INT_MIN <= value <= _INT_MAX


def _check_base64(value: str) -> None:
    """A Go []byte field takes standard base64 (padded; CR and LF ignored) and says where it
    broke: `illegal base64 data at input byte N`."""
    text = value.replace("\r", "").replace("\n", "") if "\n" in value or "\r" in value else value
    try:
        binascii.a2b_base64(text, strict_mode=True)
        return
    except (binascii.Error, ValueError):
        pass
    bad = _BASE64_BAD.search(value)
    if bad is not None:
        offset = bad.start()
    elif len(text) % 4:  # a quantum cut short: Go points at its start
        offset = len(value) - len(text) % 4
    else:  # padding in the middle: Go points at it, or just after it once the quantum ends
        offset = value.find("=")
        filled = len(value[:offset].replace("\r", "").replace("\n", "")) % 4
        if filled >= 2:
            offset += 4 - filled
    raise OllamaRequestError(400, f"illegal base64 data at input byte {offset}")


def _check_values(body: dict[str, Any], request_type: GoType) -> None:
    """Value rules Ollama enforces while decoding (or, for `format`, before any model runs),
    for the fields `request_type` has (Go ignores the others)."""
    known = request_type.fields or {}
    body = {key: value for key, value in body.items() if key in known}
    think = body.get("think")
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise OllamaRequestError(
            400, f"invalid think value: {_go_quote(clip(think))} (must be {THINK_RULE})"
        )
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str):
        check_duration(keep_alive)
    top_logprobs = body.get("top_logprobs")
    if isinstance(top_logprobs, (int, float)) and not 0 <= top_logprobs <= 20:
        raise OllamaRequestError(400, "top_logprobs must be between 0 and 20")
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise OllamaRequestError(400, "raw mode does not support template, system, or context")
    _check_format(body.get("format"))


def check_duration(text: str) -> None:
    """A Go duration string (`5m`, `1h30m`, `0`), as time.ParseDuration judges it."""
    if text == "0" or _GO_DURATION.match(text):
        return
    shown = _go_quote(clip(text))
    if re.fullmatch(r"[-+]?\d+(\.\d*)?", text):
        raise OllamaRequestError(400, f"time: missing unit in duration {shown}")
    raise OllamaRequestError(400, f"time: invalid duration {shown}")


def _check_format(value: Any) -> None:
    """`format` is "json" or a JSON Schema object (`null` and "" mean none). Ollama only finds
    out in the runner and answers 500 with this text; Corral answers it at the edge, as the
    client's error it is, before the request takes a place in the lane."""
    if value is None or value in ("", "json") or isinstance(value, dict):
        return
    raw = orjson.dumps(value).decode()
    raise OllamaRequestError(
        400,
        f'invalid format: {_go_quote(clip(raw))}; expected "json" or a valid JSON Schema object',
    )


def _go_quote(text: str) -> str:
    """Go's %q for ordinary text: double quotes, with backslashes and quotes escaped."""
    return json.dumps(text, ensure_ascii=False)
