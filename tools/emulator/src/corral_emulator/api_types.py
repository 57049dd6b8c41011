"""Ollama's request structs (`api/types.go`), decoded with Go's rules.

Go's decoder matches keys case-insensitively, ignores unknown keys, treats `null` as "leave
unset", and words type mismatches as `json: cannot unmarshal <kind> into Go struct field
<Struct>.<path> of type <type>`. Only what the emulator uses is modelled in detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral_emulator.durations import DurationError, KeepAlive, parse_keep_alive
from corral_emulator.wire import ApiError, go_quote, json_kind


class _GoType:
    go_name = "interface {}"

    def check(self, value: Any, struct: str, path: str) -> Any:
        return value

    def mismatch(self, value: Any, struct: str, path: str) -> ApiError:
        kind = json_kind(value)
        if kind == "number" and isinstance(value, float):
            kind = f"number {value!r}"
        return ApiError(
            400,
            f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} "
            f"of type {self.go_name}",
        )


class _Scalar(_GoType):
    def __init__(self, go_name: str, *accepted: type) -> None:
        self.go_name = go_name
        self.accepted = accepted

    def check(self, value: Any, struct: str, path: str) -> Any:
        # bool is an int subclass in Python but a distinct kind in JSON.
        if isinstance(value, bool) and bool not in self.accepted:
            raise self.mismatch(value, struct, path)
        if not isinstance(value, self.accepted):
            raise self.mismatch(value, struct, path)
        return value


class _Int(_Scalar):
    def __init__(self) -> None:
        super().__init__("int", int)

    def check(self, value: Any, struct: str, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.mismatch(value, struct, path)
        return value


class _Map(_GoType):
    go_name = "map[string]interface {}"

    def check(self, value: Any, struct: str, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, struct, path)
        return value


class _MapOf(_Map):
    """`map[string]<item>`: Go names the field, not the key, when a value has the wrong type."""

    def __init__(self, item: _GoType) -> None:
        self.item = item
        self.go_name = f"map[string]{item.go_name}"

    def check(self, value: Any, struct: str, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, struct, path)
        return {
            key: None if item is None else self.item.check(item, struct, path)
            for key, item in value.items()
        }


THINK_VALUES = ("high", "medium", "low", "max")


class _Think(_GoType):
    """`api.ThinkValue`: a bool or one of the levels; its UnmarshalJSON words the errors,
    and Go's decoder passes them on as they are."""

    def check(self, value: Any, struct: str, path: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            if value not in THINK_VALUES:
                raise ApiError(
                    400,
                    f"invalid think value: {go_quote(value)} "
                    '(must be "high", "medium", "low", "max", true, or false)',
                )
            return value
        raise ApiError(
            400,
            'think must be a boolean or string ("high", "medium", "low", "max", true, or false)',
        )


class _Duration(_GoType):
    go_name = "api.Duration"

    def check(self, value: Any, struct: str, path: str) -> Any:
        try:
            return parse_keep_alive(value)
        except DurationError as exc:
            raise ApiError(400, str(exc)) from None


class _Slice(_GoType):
    def __init__(self, item: _GoType, go_name: str | None = None) -> None:
        self.item = item
        self.go_name = go_name or f"[]{item.go_name}"

    def check(self, value: Any, struct: str, path: str) -> Any:
        if not isinstance(value, list):
            raise self.mismatch(value, struct, path)
        return [None if item is None else self.item.check(item, struct, path) for item in value]


class _Struct(_GoType):
    def __init__(self, name: str, fields: Mapping[str, _GoType]) -> None:
        self.name = name
        self.go_name = f"api.{name}"
        self.fields = dict(fields)
        self._folded = {key.lower(): key for key in fields}

    def check(self, value: Any, struct: str, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, struct, path)
        return self.decode(value, path)

    def decode(self, body: Mapping[str, Any], path: str = "") -> dict[str, Any]:
        decoded: dict[str, Any] = {}
        for key, value in body.items():
            # Go prefers an exact key match, then falls back to a case-insensitive one.
            field = key if key in self.fields else self._folded.get(key.lower())
            if field is None or value is None:
                continue
            field_path = f"{path}.{field}" if path else field
            decoded[field] = self.fields[field].check(value, self.name, field_path)
        return decoded


_STRING = _Scalar("string", str)
_BOOL = _Scalar("bool", bool)
_INT = _Int()
_ANY = _GoType()
_MAP = _Map()
_DURATION = _Duration()
_IMAGES = _Slice(_Scalar("api.ImageData", str), "[]api.ImageData")

_MESSAGE = _Struct(
    "Message",
    {
        "role": _STRING,
        "content": _STRING,
        "thinking": _STRING,
        "images": _IMAGES,
        "tool_calls": _Slice(_Map(), "[]api.ToolCall"),
        "tool_name": _STRING,
        "tool_call_id": _STRING,
    },
)
_COMMON = {
    "model": _STRING,
    "stream": _BOOL,
    "format": _ANY,
    "keep_alive": _DURATION,
    "options": _MAP,
    "think": _Think(),
    "truncate": _BOOL,
    "shift": _BOOL,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
}
_CHAT_REQUEST = _Struct(
    "ChatRequest",
    {**_COMMON, "messages": _Slice(_MESSAGE), "tools": _Slice(_ANY, "api.Tools")},
)
_GENERATE_REQUEST = _Struct(
    "GenerateRequest",
    {
        **_COMMON,
        "prompt": _STRING,
        "suffix": _STRING,
        "system": _STRING,
        "template": _STRING,
        "context": _Slice(_INT),
        "raw": _BOOL,
        "images": _IMAGES,
    },
)
_SHOW_REQUEST = _Struct(
    "ShowRequest",
    {
        "model": _STRING,
        "name": _STRING,
        "system": _STRING,
        "template": _STRING,
        "verbose": _BOOL,
        "options": _MAP,
    },
)


_PULL_REQUEST = _Struct(
    "PullRequest",
    {
        "model": _STRING,
        "name": _STRING,
        "insecure": _BOOL,
        "username": _STRING,
        "password": _STRING,
        "stream": _BOOL,
    },
)
_PUSH_REQUEST = _Struct("PushRequest", _PULL_REQUEST.fields)
_DELETE_REQUEST = _Struct("DeleteRequest", {"model": _STRING, "name": _STRING})
_COPY_REQUEST = _Struct("CopyRequest", {"source": _STRING, "destination": _STRING})
_CREATE_REQUEST = _Struct(
    "CreateRequest",
    {
        "model": _STRING,
        "name": _STRING,
        "from": _STRING,
        "files": _MapOf(_STRING),
        "adapters": _MapOf(_STRING),
        "template": _STRING,
        "license": _ANY,
        "system": _STRING,
        "parameters": _MAP,
        "messages": _Slice(_MESSAGE),
        "quantize": _STRING,
        "quantization": _STRING,
        "stream": _BOOL,
        "renderer": _STRING,
        "parser": _STRING,
        "requires": _STRING,
        "info": _MAP,
        "remote_host": _STRING,
    },
)
_EMBED_REQUEST = _Struct(
    "EmbedRequest",
    {
        "model": _STRING,
        "input": _ANY,
        "truncate": _BOOL,
        "dimensions": _INT,
        "keep_alive": _DURATION,
        "options": _MAP,
    },
)
_EMBEDDING_REQUEST = _Struct(
    "EmbeddingRequest",
    {"model": _STRING, "prompt": _STRING, "keep_alive": _DURATION, "options": _MAP},
)


@dataclass(frozen=True, slots=True)
class Options:
    """The runtime options the emulator honours; everything else is accepted and ignored."""

    num_predict: int | None = None
    num_ctx: int | None = None

    @classmethod
    def from_map(cls, options: Mapping[str, Any]) -> Options:
        return cls(
            num_predict=_int_option(options, "num_predict"),
            num_ctx=_int_option(options, "num_ctx"),
        )


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Fields shared by chat and generate."""

    model: str
    stream: bool
    keep_alive: KeepAlive | None
    options: dict[str, Any]
    """Raw; Ollama only type-checks options when scheduling, after the model lookup."""
    truncate: bool
    shift: bool
    think: bool | str | None
    """None when absent: a thinking model then thinks, as Ollama defaults it."""
    format: object
    """As sent: None, "", "json", a JSON Schema object, or something the runner refuses."""

    @property
    def wants_thinking(self) -> bool:
        """`think: true` or a level (`ThinkValue.Bool()`)."""
        return self.think is True or self.think in THINK_VALUES


@dataclass(frozen=True, slots=True)
class ChatRequest(GenerationRequest):
    messages: tuple[dict[str, Any], ...]
    tools: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class GenerateRequest(GenerationRequest):
    prompt: str
    system: str
    template: str
    context: tuple[int, ...]
    raw: bool


@dataclass(frozen=True, slots=True)
class ShowRequest:
    model: str


@dataclass(frozen=True, slots=True)
class PullRequest:
    model: str
    """`model`, or the deprecated `name` (ollama-js still sends it)."""
    stream: bool


@dataclass(frozen=True, slots=True)
class PushRequest:
    model: str
    """`model`, or the deprecated `name`."""
    insecure: bool
    stream: bool


@dataclass(frozen=True, slots=True)
class CopyRequest:
    source: str
    destination: str


@dataclass(frozen=True, slots=True)
class CreateRequest:
    model: str
    base: str
    """`from`: the local (or else pulled) model to build on; "" when absent."""
    files: dict[str, str] | None
    """None when absent; Ollama tells an absent map from an empty one."""
    template: str
    system: str
    license: object
    """A string or a list of strings; checked when the model is written, as in Ollama."""
    parameters: dict[str, Any]
    messages: tuple[dict[str, str], ...]
    quantize: str
    """`quantize`, or the deprecated `quantization`, upper-cased."""
    stream: bool


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    model: str
    input: object
    """A string, a list of strings, or (absent) None; anything else is refused later."""
    truncate: bool
    dimensions: int
    keep_alive: KeepAlive | None
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    prompt: str
    keep_alive: KeepAlive | None
    options: dict[str, Any]


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    fields = _CHAT_REQUEST.decode(body)
    messages = []
    for message in fields.get("messages", []):
        message = dict(message or {})
        # Go's Message.UnmarshalJSON lowercases the role.
        message["role"] = str(message.get("role", "")).lower()
        messages.append(message)
    return ChatRequest(
        **_generation_fields(fields),
        messages=tuple(messages),
        tools=tuple(fields.get("tools", ())),
    )


def parse_generate_request(body: Mapping[str, Any]) -> GenerateRequest:
    fields = _GENERATE_REQUEST.decode(body)
    return GenerateRequest(
        **_generation_fields(fields),
        prompt=fields.get("prompt", ""),
        system=fields.get("system", ""),
        template=fields.get("template", ""),
        context=tuple(item or 0 for item in fields.get("context", ())),
        raw=fields.get("raw", False),
    )


def parse_show_request(body: Mapping[str, Any]) -> ShowRequest:
    fields = _SHOW_REQUEST.decode(body)
    # `name` is the deprecated spelling; `model` wins when both are set.
    return ShowRequest(model=fields.get("model") or fields.get("name", ""))


def parse_pull_request(body: Mapping[str, Any]) -> PullRequest:
    fields = _PULL_REQUEST.decode(body)
    return PullRequest(
        model=fields.get("model") or fields.get("name", ""), stream=fields.get("stream", True)
    )


def parse_push_request(body: Mapping[str, Any]) -> PushRequest:
    fields = _PUSH_REQUEST.decode(body)
    return PushRequest(
        model=fields.get("model") or fields.get("name", ""),
        insecure=fields.get("insecure", False),
        stream=fields.get("stream", True),
    )


def parse_delete_request(body: Mapping[str, Any]) -> str:
    """The model to delete: `model`, or the deprecated `name`."""
    fields = _DELETE_REQUEST.decode(body)
    return str(fields.get("model") or fields.get("name", ""))


def parse_copy_request(body: Mapping[str, Any]) -> CopyRequest:
    fields = _COPY_REQUEST.decode(body)
    return CopyRequest(source=fields.get("source", ""), destination=fields.get("destination", ""))


def parse_create_request(body: Mapping[str, Any]) -> CreateRequest:
    fields = _CREATE_REQUEST.decode(body)
    messages = tuple(
        {"role": str(m.get("role", "")).lower(), "content": str(m.get("content", ""))}
        for m in fields.get("messages", ())
        if m is not None
    )
    files = fields.get("files")
    return CreateRequest(
        model=fields.get("model") or fields.get("name", ""),
        base=fields.get("from", ""),
        files=None if files is None else {k: v or "" for k, v in files.items()},
        template=fields.get("template", ""),
        system=fields.get("system", ""),
        license=fields.get("license"),
        parameters=fields.get("parameters", {}),
        messages=messages,
        quantize=(fields.get("quantize") or fields.get("quantization", "")).upper(),
        stream=fields.get("stream", True),
    )


def parse_embed_request(body: Mapping[str, Any]) -> EmbedRequest:
    fields = _EMBED_REQUEST.decode(body)
    return EmbedRequest(
        model=fields.get("model", ""),
        input=fields.get("input"),
        truncate=fields.get("truncate", True),
        dimensions=fields.get("dimensions", 0),
        keep_alive=fields.get("keep_alive"),
        options=fields.get("options", {}),
    )


def parse_embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    fields = _EMBEDDING_REQUEST.decode(body)
    return EmbeddingRequest(
        model=fields.get("model", ""),
        prompt=fields.get("prompt", ""),
        keep_alive=fields.get("keep_alive"),
        options=fields.get("options", {}),
    )


def _generation_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model": fields.get("model", ""),
        # Ollama's `*bool`: only an explicit false turns streaming off.
        "stream": fields.get("stream", True),
        "keep_alive": fields.get("keep_alive"),
        "options": fields.get("options", {}),
        "truncate": fields.get("truncate", True),
        "shift": fields.get("shift", True),
        "think": fields.get("think"),
        "format": fields.get("format"),
    }


def _int_option(options: Mapping[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    # Options.FromMap accepts any JSON number for an int option and truncates it.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(500, f'option "{key}" must be of type integer')
    return int(value)
