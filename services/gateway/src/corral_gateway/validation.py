"""Request decoding and type checks that answer exactly as Ollama (Go's encoding/json) does.

Ollama clients and tests match on these texts, e.g. `missing request body` or
`json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson


class OllamaRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class GoType:
    """A Go type as Ollama declares a field: the JSON kinds it accepts and the name Go prints."""

    name: str
    kinds: frozenset[str]
    item: GoType | None = None
    fields: dict[str, GoType] | None = None
    struct: str | None = None


def _t(name: str, *kinds: str, item: GoType | None = None) -> GoType:
    return GoType(name, frozenset(kinds), item=item)


STRING = _t("string", "string")
BOOL = _t("bool", "bool")
INT = _t("int", "number")
RAW = _t("json.RawMessage", "string", "number", "bool", "object", "array")
OBJECT = _t("map[string]interface {}", "object")
DURATION = _t("api.Duration", "string", "number")
THINK = _t("api.ThinkValue", "string", "bool")
IMAGES = _t("[]api.ImageData", "array", item=STRING)
MESSAGE = GoType(
    "api.Message",
    frozenset({"object"}),
    struct="Message",
    fields={
        "role": STRING,
        "content": STRING,
        "thinking": STRING,
        "images": IMAGES,
        "tool_calls": _t("[]api.ToolCall", "array", item=_t("api.ToolCall", "object")),
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


REQUEST_TYPES: dict[str, GoType] = {
    "chat": GoType(
        "api.ChatRequest",
        frozenset({"object"}),
        struct="ChatRequest",
        fields={
            **COMMON_FIELDS,
            "messages": _t("[]api.Message", "array", item=MESSAGE),
            "tools": _t("api.Tools", "array", item=_t("api.Tool", "object")),
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
    "pull": _struct(
        "PullRequest",
        model=STRING,
        name=STRING,
        insecure=BOOL,
        username=STRING,
        password=STRING,
        stream=BOOL,
    ),
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

THINK_LEVELS = frozenset({"low", "medium", "high", "max"})
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")


def decode_body(raw: bytes, kind: str) -> dict[str, Any]:
    """The request body as Ollama's handler for `kind` (a REQUEST_TYPES key) would decode it."""
    if not raw.strip():
        raise OllamaRequestError(400, "missing request body")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OllamaRequestError(400, _decode_message(exc, raw)) from exc
    request_type = REQUEST_TYPES[kind]
    if not isinstance(value, dict):
        raise OllamaRequestError(
            400, f"json: cannot unmarshal {_kind(value)} into Go value of type {request_type.name}"
        )
    _check_struct(value, request_type, request_type.struct or "")
    _check_values(value)
    return value


def _decode_message(exc: orjson.JSONDecodeError, raw: bytes) -> str:
    text = str(exc)
    if "surrogate" in text:
        return "invalid request body: lone surrogate in a JSON string (text must be valid UTF-8)"
    if "not valid UTF-8" in text:
        return "invalid request body: not valid UTF-8"
    if exc.pos >= len(raw.rstrip()):
        return "unexpected EOF"
    char = raw[exc.pos : exc.pos + 1].decode(errors="replace")
    return f"invalid character {char!r} looking for beginning of value"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_struct(value: dict[str, Any], go_type: GoType, path: str) -> None:
    for key, field_type in (go_type.fields or {}).items():
        if key in value:
            _check_value(value[key], field_type, f"{path}.{key}")


def _check_value(value: Any, go_type: GoType, path: str) -> None:
    if value is None:  # JSON null leaves a Go field at its zero value
        return
    kind = _kind(value)
    if kind not in go_type.kinds or (go_type is INT and not float(value).is_integer()):
        struct, _, field = path.partition(".")
        raise OllamaRequestError(
            400,
            f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} "
            f"of type {go_type.name}",
        )
    if go_type.item is not None and isinstance(value, list):
        for item in value:
            _check_value(item, go_type.item, path)
    if go_type.fields is not None and isinstance(value, dict):
        _check_struct(value, go_type, path)


def _check_values(body: dict[str, Any]) -> None:
    """Value rules Ollama enforces while decoding, before any model is touched."""
    think = body.get("think")
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise OllamaRequestError(400, f"invalid think value: {think!r}")
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str) and keep_alive != "0" and not _GO_DURATION.match(keep_alive):
        if re.fullmatch(r"[-+]?\d+(\.\d*)?", keep_alive):
            raise OllamaRequestError(400, f'time: missing unit in duration "{keep_alive}"')
        raise OllamaRequestError(400, f'time: invalid duration "{keep_alive}"')
    top_logprobs = body.get("top_logprobs")
    if isinstance(top_logprobs, (int, float)) and not 0 <= top_logprobs <= 20:
        raise OllamaRequestError(400, "top_logprobs must be between 0 and 20")
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise OllamaRequestError(400, "raw mode does not support template, system, or context")
