"""The OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) and
their translation to native Ollama bodies, as Ollama's `openai.FromChatRequest`,
`openai.FromCompleteRequest` and `middleware.EmbeddingsMiddleware` build them.

Decoding follows Go's `encoding/json` into Ollama's structs: unknown fields are ignored, `null`
leaves a field at its zero value, and a value of the wrong JSON kind is refused with Go's text
(`json: cannot unmarshal string into Go struct field ChatCompletionRequest.stream of type bool`).
Every refusal is an `OpenAIError` 400 (`invalid_request_error`) with the text Ollama's middleware
writes.

The native bodies hold the fields Ollama's structs would carry after the same translation (zero
values that Go would encode but that mean "not set", such as an empty `suffix`, are left out).
Corral's extension fields travel in the native body as a native client would send them
(`session_id`, `request_id`, `priority`), so the native pipeline reads and strips them as usual.

Session id precedence (most specific first):
1. `metadata.session_id`: explicit, per request, and a typed parameter of the OpenAI SDKs;
2. a top-level `session_id` (the SDKs' `extra_body`), Corral's native body field;
3. the `X-Session-Id` header: often set once per client (`default_headers`);
4. `user`: OpenAI's end-user identifier. Lowest, because applications set it for abuse tracking
   and keep sending whole histories; with a session the store would add the history a second
   time. `user_is_session=False` turns this source off.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral_common.clip import clip
from corral_common.ids import InvalidId, check_client_id, is_valid_client_id
from corral_common.jsonutil import MAX_DEPTH, TooDeep, loads_bounded
from corral_common.messages import PRIORITIES
from corral_gateway.openai.errors import OpenAIError, invalid_request
from corral_gateway.validation import text_refusal

# Go's int is 64 bits on every platform Ollama ships for; a larger literal fails to decode.
GoInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]

EMPTY_MESSAGES = "[] is too short - 'messages'"
INVALID_MESSAGE_FORMAT = "invalid message format"
INVALID_IMAGE = "invalid image input"
IMAGE_URLS_UNSUPPORTED = (
    "image URLs are not currently supported, please use base64 encoded data instead"
)
INVALID_TOOL_ARGUMENTS = "invalid tool call arguments"
INVALID_INPUT = "invalid input"
INVALID_INPUT_TYPE = "invalid input type"
TOO_DEEP = f"exceeded max depth: Corral accepts at most {MAX_DEPTH} levels of JSON nesting"
# OpenAI's reasoning scale reaches past Ollama's at both ends; clamped as Ollama does.
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_IMAGE_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp"))
# A blank mime type is taken, like /api/chat takes unadorned base64.
_BLANK_IMAGE_PREFIX = "data:;base64,"


class GoStruct(BaseModel):
    """A pydantic model standing for one of Ollama's Go structs: decoding as Go does (no
    coercion between JSON kinds, unknown fields ignored), and the Go names its errors print."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True, frozen=True)

    # The struct's Go name, and each field's Go type (for a slice, also its element's type).
    GO_STRUCT: ClassVar[str] = ""
    GO_TYPES: ClassVar[dict[str, str | tuple[str, str]]] = {}


class StreamOptions(GoStruct):
    GO_STRUCT = "StreamOptions"
    GO_TYPES = {"include_usage": "bool"}
    include_usage: bool | None = None


class ToolCallFunction(GoStruct):
    # An anonymous struct in Ollama's openai.ToolCall: Go prints an empty struct name.
    GO_STRUCT = ""
    GO_TYPES = {"name": "string", "arguments": "string"}
    name: str | None = None
    arguments: str | None = None


class ToolCall(GoStruct):
    GO_STRUCT = "ToolCall"
    GO_TYPES = {
        "id": "string",
        "index": "int",
        "type": "string",
        # What Go's reflect prints for the anonymous struct.
        "function": 'struct { Name string "json:\\"name\\""; '
        'Arguments string "json:\\"arguments\\"" }',
    }
    id: str | None = None
    index: GoInt | None = None
    type: str | None = None
    function: ToolCallFunction | None = None


class Message(GoStruct):
    GO_STRUCT = "Message"
    GO_TYPES = {
        "role": "string",
        "reasoning": "string",
        "tool_calls": ("[]openai.ToolCall", "openai.ToolCall"),
        "name": "string",
        "tool_call_id": "string",
    }
    role: str | None = None
    # Go's `any`: a string, or an array of content parts; anything else is refused later, with
    # Ollama's own text.
    content: Any = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class JsonSchema(GoStruct):
    GO_STRUCT = "JsonSchema"
    GO_TYPES = {}
    # json.RawMessage: any JSON value, passed through as `format`.
    schema_: Any = Field(None, alias="schema")


class ResponseFormat(GoStruct):
    GO_STRUCT = "ResponseFormat"
    GO_TYPES = {"type": "string", "json_schema": "openai.JsonSchema"}
    type: str | None = None
    json_schema: JsonSchema | None = None


class Reasoning(GoStruct):
    GO_STRUCT = "Reasoning"
    GO_TYPES = {"effort": "string"}
    effort: str | None = None


class ToolParameters(GoStruct):
    GO_STRUCT = "ToolFunctionParameters"
    GO_TYPES = {
        "type": "string",
        "required": ("[]string", "string"),
        "properties": "api.ToolPropertiesMap",
    }
    type: str | None = None
    defs: Any = Field(None, alias="$defs")
    items: Any = None
    required: list[str] | None = None
    properties: dict[str, Any] | None = None


class ToolFunction(GoStruct):
    GO_STRUCT = "ToolFunction"
    GO_TYPES = {
        "name": "string",
        "description": "string",
        "parameters": "api.ToolFunctionParameters",
    }
    name: str | None = None
    description: str | None = None
    parameters: ToolParameters | None = None


class Tool(GoStruct):
    GO_STRUCT = "Tool"
    GO_TYPES = {"type": "string", "function": "api.ToolFunction"}
    type: str | None = None
    items: Any = None
    function: ToolFunction | None = None


class CorralFields(GoStruct):
    """Corral's own fields, accepted on every `/v1` request body (OpenAI SDKs send them with
    `extra_body`), plus OpenAI's `user` and `metadata`, which Ollama ignores."""

    GO_TYPES = {
        "session_id": "string",
        "request_id": "string",
        "priority": "string",
        "user": "string",
        "metadata": "map[string]string",
    }
    session_id: str | None = None
    request_id: str | None = None
    priority: str | None = None
    user: str | None = None
    # OpenAI's metadata is string to string; only `session_id` means something to Corral.
    metadata: dict[str, Any] | None = None

    def extensions(
        self, session_header: str | None = None, *, user_is_session: bool = True
    ) -> dict[str, str]:
        """Corral's fields for the native body, the session id chosen by the precedence in this
        module's docstring. A header wins over `user` by being left to the native pipeline (it
        reads `X-Session-Id` when the body has no `session_id`)."""
        fields: dict[str, str] = {}
        metadata_session = (self.metadata or {}).get("session_id")
        if not isinstance(metadata_session, str):
            metadata_session = None
        session = metadata_session or self.session_id
        if session:
            fields["session_id"] = _client_id(session, "session_id")
        elif (
            not session_header
            and user_is_session
            and self.user
            # `user` is often an e-mail address or other text Corral's ids cannot hold; it is
            # an implicit source, so such a value is ignored rather than refused.
            and is_valid_client_id(self.user)
        ):
            fields["session_id"] = self.user
        if self.request_id:
            fields["request_id"] = _client_id(self.request_id, "request_id")
        if self.priority:
            if self.priority not in PRIORITIES:
                raise invalid_request(
                    f"invalid priority {clip(self.priority)!r}: use one of {', '.join(PRIORITIES)}",
                    param="priority",
                )
            fields["priority"] = self.priority
        return fields


def _client_id(value: str, name: str) -> str:
    try:
        return check_client_id(value, name)
    except InvalidId as exc:
        raise invalid_request(exc.message, param=name) from exc


class GenerationFields(CorralFields):
    """The fields Ollama's `ChatCompletionRequest` and `CompletionRequest` both have. Each
    struct keeps its own GO_TYPES: the float widths differ (float64 and float32)."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: GoInt | None = None
    seed: GoInt | None = None
    # Go's `any`: a string or an array, each struct reading it its own way (`_stop_list`).
    stop: Any = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_p: float | None = None
    debug_render_only: bool | None = Field(None, alias="_debug_render_only")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationFields):
    GO_STRUCT = "ChatCompletionRequest"
    GO_TYPES = {
        **CorralFields.GO_TYPES,
        "model": "string",
        "messages": ("[]openai.Message", "openai.Message"),
        "stream": "bool",
        "stream_options": "openai.StreamOptions",
        "max_tokens": "int",
        "max_completion_tokens": "int",
        "seed": "int",
        "temperature": "float64",
        "frequency_penalty": "float64",
        "presence_penalty": "float64",
        "top_p": "float64",
        "response_format": "openai.ResponseFormat",
        "tools": ("[]api.Tool", "api.Tool"),
        "reasoning": "openai.Reasoning",
        "reasoning_effort": "string",
        "logprobs": "bool",
        "top_logprobs": "int",
        "_debug_render_only": "bool",
    }
    messages: list[Message] | None = None
    # OpenAI's newer name for max_tokens (Ollama ignores it); max_tokens wins when both are set,
    # so a body that works against Ollama behaves the same here.
    max_completion_tokens: GoInt | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: GoInt | None = None

    def to_ollama(
        self, session_header: str | None = None, *, user_is_session: bool = True
    ) -> dict[str, Any]:
        """The native `/api/chat` body, as `openai.FromChatRequest` builds it."""
        messages = self.messages or []
        if not messages:
            raise invalid_request(EMPTY_MESSAGES)
        body: dict[str, Any] = {
            "model": self.model or "",
            "messages": _chat_messages(messages),
            "stream": bool(self.stream),
        }
        format_ = self._format()
        if format_ is not None:
            body["format"] = format_
        if self.tools:
            body["tools"] = [_tool(tool) for tool in self.tools]
        body["options"] = self._options()
        think = think_from_effort(self._effort())
        if think is not None:
            body["think"] = think
        if self.logprobs:
            body["logprobs"] = True
        if self.top_logprobs:
            body["top_logprobs"] = self.top_logprobs
        if self.debug_render_only:
            body["_debug_render_only"] = True
        body.update(self.extensions(session_header, user_is_session=user_is_session))
        return body

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        stop = _stop_list(self.stop, strict=False)
        if stop:
            options["stop"] = stop
        max_tokens = self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        # OpenAI's defaults, not Ollama's (0.8 and 0.9): what an OpenAI client expects.
        options["temperature"] = self.temperature if self.temperature is not None else 1.0
        if self.seed is not None:
            options["seed"] = self.seed
        if self.frequency_penalty is not None:
            options["frequency_penalty"] = self.frequency_penalty
        if self.presence_penalty is not None:
            options["presence_penalty"] = self.presence_penalty
        options["top_p"] = self.top_p if self.top_p is not None else 1.0
        return options

    def _format(self) -> Any:
        if self.response_format is None:
            return None
        kind = (self.response_format.type or "").strip().lower()
        if kind == "json_object":
            return "json"
        if kind == "json_schema" and self.response_format.json_schema is not None:
            return self.response_format.json_schema.schema_
        return None

    def _effort(self) -> str:
        # `reasoning` (the Responses API's spelling) wins whenever present, even without effort.
        if self.reasoning is not None:
            return self.reasoning.effort or ""
        return self.reasoning_effort or ""


class CompletionRequest(GenerationFields):
    GO_STRUCT = "CompletionRequest"
    GO_TYPES = {
        **CorralFields.GO_TYPES,
        "model": "string",
        "prompt": "string",
        "frequency_penalty": "float32",
        "max_tokens": "int",
        "presence_penalty": "float32",
        "seed": "int",
        "stream": "bool",
        "stream_options": "openai.StreamOptions",
        "temperature": "float32",
        "top_p": "float32",
        "suffix": "string",
        "logprobs": "int",
        "_debug_render_only": "bool",
    }
    # Only a string: Ollama does not take OpenAI's token arrays or prompt lists.
    prompt: str | None = None
    suffix: str | None = None
    logprobs: GoInt | None = None

    def to_ollama(
        self, session_header: str | None = None, *, user_is_session: bool = True
    ) -> dict[str, Any]:
        """The native `/api/generate` body, as `openai.FromCompleteRequest` builds it."""
        options: dict[str, Any] = {}
        stop = _stop_list(self.stop, strict=True)
        if stop is not None:
            options["stop"] = stop
        if self.max_tokens is not None:
            options["num_predict"] = self.max_tokens
        options["temperature"] = self.temperature if self.temperature is not None else 1.0
        if self.seed is not None:
            options["seed"] = self.seed
        # Go's float32 fields: always sent, zero when absent.
        options["frequency_penalty"] = self.frequency_penalty or 0.0
        options["presence_penalty"] = self.presence_penalty or 0.0
        options["top_p"] = self.top_p or 1.0
        body: dict[str, Any] = {
            "model": self.model or "",
            "prompt": self.prompt or "",
            "stream": bool(self.stream),
            "options": options,
        }
        if self.suffix:
            body["suffix"] = self.suffix
        if self.logprobs is not None and self.logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = self.logprobs
        if self.debug_render_only:
            body["_debug_render_only"] = True
        body.update(self.extensions(session_header, user_is_session=user_is_session))
        return body


class EmbeddingRequest(CorralFields):
    GO_STRUCT = "EmbedRequest"
    GO_TYPES = {
        **CorralFields.GO_TYPES,
        "model": "string",
        "dimensions": "int",
        "encoding_format": "string",
    }
    input: Any = None
    model: str | None = None
    dimensions: GoInt | None = None
    encoding_format: str | None = None

    @property
    def base64(self) -> bool:
        return (self.encoding_format or "").lower() == "base64"

    def to_ollama(self) -> dict[str, Any]:
        """The native `/api/embed` body, as `middleware.EmbeddingsMiddleware` builds it, with
        its checks in its order. Embeddings keep no conversation: no session id is sent."""
        encoding = self.encoding_format or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            raise invalid_request(
                f"Invalid value for 'encoding_format' = {clip(encoding)}. "
                "Supported values: ['float', 'base64'].",
                param="encoding_format",
            )
        value = self.input
        if value == "":
            value = [""]
        if value is None or value == []:
            raise invalid_request(INVALID_INPUT, param="input")
        # Ollama's embed handler takes a string or strings (token arrays are not supported).
        if not (
            isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(item, str) for item in value))
        ):
            raise invalid_request(INVALID_INPUT_TYPE, param="input")
        body: dict[str, Any] = {"model": self.model or "", "input": value}
        if self.dimensions:
            body["dimensions"] = self.dimensions
        extensions = self.extensions(user_is_session=False)
        extensions.pop("session_id", None)
        body.update(extensions)
        return body


def think_from_effort(effort: str) -> bool | str | None:
    """Ollama's `think` for an OpenAI reasoning effort; None leaves the model's default."""
    if effort == "":
        return None
    if effort in _EFFORT_TO_THINK:
        return _EFFORT_TO_THINK[effort]
    raise invalid_request(
        f"invalid reasoning value: {_go_quote(clip(effort))} (must be "
        '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none")',
        param="reasoning_effort",
    )


T = TypeVar("T", bound=GoStruct)


# --- decoding ---------------------------------------------------------------------------------


def parse_chat(raw: bytes) -> ChatCompletionRequest:
    return parse(raw, ChatCompletionRequest)


def parse_completion(raw: bytes) -> CompletionRequest:
    return parse(raw, CompletionRequest)


def parse_embedding(raw: bytes) -> EmbeddingRequest:
    return parse(raw, EmbeddingRequest)


def parse(raw: bytes, model: type[T]) -> T:
    """`raw` decoded into `model` as gin's ShouldBindJSON decodes into Ollama's struct, or the
    400 Ollama's middleware answers."""
    if not raw.strip():
        # Ollama's middleware says "EOF" here (Go's decoder error); Corral says what its
        # native surface says, which a person can act on.
        raise invalid_request("missing request body")
    try:
        value = loads_bounded(raw)
    except TooDeep as exc:
        raise invalid_request(TOO_DEEP) from exc
    except orjson.JSONDecodeError as exc:
        raise invalid_request(_syntax_message(exc, raw)) from exc
    if not isinstance(value, dict):
        raise invalid_request(
            f"json: cannot unmarshal {_kind(value)} into Go value of type openai.{model.GO_STRUCT}"
        )
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_request(_go_message(model, exc, value)) from exc


def _syntax_message(exc: orjson.JSONDecodeError, raw: bytes) -> str:
    refusal = text_refusal(exc)
    if refusal is not None:
        return refusal
    if exc.pos >= len(raw.rstrip()):
        return "unexpected EOF"
    char = raw[exc.pos : exc.pos + 1].decode(errors="replace")
    return f"invalid character {char!r} looking for beginning of value"


def _go_message(model: type[GoStruct], exc: ValidationError, body: dict[str, Any]) -> str:
    """Go's UnmarshalTypeError text for the first field (in the body's order) that failed:
    `json: cannot unmarshal <kind> into Go struct field <Struct>.<path> of type <type>`, where
    Struct is the innermost struct holding the field and path the full dotted path, as Go 1.24+
    prints them."""
    keys = list(body)
    errors = exc.errors()

    def order(error: Any) -> int:
        first = error["loc"][0] if error["loc"] else ""
        return keys.index(first) if first in keys else len(keys)

    error = min(errors, key=order)
    struct, path, go_type = _go_field(model, error["loc"])
    value = error["input"]
    kind = _kind(value)
    if kind == "number" and go_type == "int":
        kind = f"number {clip(_number_text(value))}"
    return f"json: cannot unmarshal {kind} into Go struct field {struct}.{path} of type {go_type}"


def _go_field(model: type[GoStruct], loc: tuple[int | str, ...]) -> tuple[str, str, str]:
    """(innermost struct name, dotted JSON path, Go type) for a pydantic error location."""
    current: type[GoStruct] | None = model
    struct = model.GO_STRUCT
    path: list[str] = []
    go_type = ""
    element = ""
    for part in loc:
        if isinstance(part, int):
            go_type = element or go_type
            continue
        if current is None:
            break
        struct = current.GO_STRUCT
        path.append(part)
        declared = current.GO_TYPES.get(part, "")
        go_type, element = declared if isinstance(declared, tuple) else (declared, "")
        current = _nested(current, part)
    return struct, ".".join(path), go_type or "interface {}"


def _nested(model: type[GoStruct], key: str) -> type[GoStruct] | None:
    """The struct a field holds (directly, or as the element of its list), if any."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            for candidate in _classes(info.annotation):
                return candidate
    return None


def _classes(annotation: Any) -> list[type[GoStruct]]:
    if isinstance(annotation, type) and issubclass(annotation, GoStruct):
        return [annotation]
    found: list[type[GoStruct]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_classes(arg))
    return found


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return repr(value)
    return str(value)


def _go_type_name(value: Any) -> str:
    """What Go's %T prints for a JSON value decoded into `any`."""
    return {
        "null": "<nil>",
        "bool": "bool",
        "number": "float64",
        "string": "string",
        "array": "[]interface {}",
        "object": "map[string]interface {}",
    }[_kind(value)]


def _go_quote(text: str) -> str:
    """Go's %q for ordinary text."""
    return orjson.dumps(text).decode()


# --- translation ------------------------------------------------------------------------------


def _chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    converted: list[dict[str, Any]] = []
    for message in messages:
        role = message.role or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = message.name or ""
            if not tool_name and message.tool_call_id:
                tool_name = _name_from_tool_call_id(messages, message.tool_call_id)
        content = message.content
        if isinstance(content, str):
            converted.append(
                _native_message(
                    role,
                    content,
                    thinking=message.reasoning,
                    tool_calls=_native_tool_calls(message.tool_calls),
                    tool_name=tool_name,
                    tool_call_id=message.tool_call_id,
                )
            )
        elif isinstance(content, list):
            # Each part becomes a message of its own, as in Ollama; tool calls go on the last.
            for part in content:
                converted.append(_part_message(role, part))
            if converted and message.tool_calls:
                last = converted[-1]
                last.update(
                    _native_message(
                        role,
                        last.get("content", ""),
                        thinking=message.reasoning,
                        tool_calls=_native_tool_calls(message.tool_calls),
                        tool_name=tool_name,
                        tool_call_id=message.tool_call_id,
                        images=last.get("images"),
                    )
                )
        else:
            # Content may be left out only by a message that carries tool calls.
            if message.tool_calls is None:
                raise invalid_request(
                    f"invalid message content type: {_go_type_name(content)}", param="messages"
                )
            converted.append(
                _native_message(
                    role,
                    "",
                    thinking=message.reasoning,
                    tool_calls=_native_tool_calls(message.tool_calls),
                    tool_call_id=message.tool_call_id,
                )
            )
    return converted


def _native_message(
    role: str,
    content: str,
    *,
    thinking: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_name: str | None = None,
    tool_call_id: str | None = None,
    images: list[str] | None = None,
) -> dict[str, Any]:
    """An api.Message as Go encodes it: role and content always, the rest when set."""
    native: dict[str, Any] = {"role": role, "content": content}
    if thinking:
        native["thinking"] = thinking
    if images:
        native["images"] = images
    if tool_calls:
        native["tool_calls"] = tool_calls
    if tool_name:
        native["tool_name"] = tool_name
    if tool_call_id:
        native["tool_call_id"] = tool_call_id
    return native


def _part_message(role: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid_request(INVALID_MESSAGE_FORMAT, param="messages")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid_request(INVALID_MESSAGE_FORMAT, param="messages")
        return _native_message(role, text)
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise invalid_request(INVALID_MESSAGE_FORMAT, param="messages")
        return _native_message(role, "", images=[decode_image_url(url)])
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise invalid_request("invalid input_audio format", param="messages")
        data = audio.get("data")
        if not isinstance(data, str):
            raise invalid_request("invalid input_audio format: missing data", param="messages")
        try:
            decoded = _b64decode(data)
        except ValueError as exc:
            raise invalid_request(
                f"invalid input_audio base64 data: {exc}", param="messages"
            ) from exc
        # Ollama hands audio to the model the way it hands images.
        return _native_message(role, "", images=[base64.b64encode(decoded).decode()])
    raise invalid_request(INVALID_MESSAGE_FORMAT, param="messages")


def decode_image_url(url: str) -> str:
    """The base64 of an image given as a data URL (native `images` take bare base64)."""
    if url.startswith(("http://", "https://")):
        raise invalid_request(IMAGE_URLS_UNSUPPORTED, param="messages")
    if url.startswith(_BLANK_IMAGE_PREFIX):
        data = url[len(_BLANK_IMAGE_PREFIX) :]
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise invalid_request(INVALID_IMAGE, param="messages")
        data = url[len(prefix) :]
    try:
        decoded = _b64decode(data)
    except ValueError as exc:
        raise invalid_request(INVALID_IMAGE, param="messages") from exc
    # Re-encoded: the native field is Go's []byte, written in standard padded base64.
    return base64.b64encode(decoded).decode()


def _b64decode(data: str) -> bytes:
    """Go's base64.StdEncoding: padded, CR and LF ignored, anything else refused."""
    text = data.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


def _native_tool_calls(calls: list[ToolCall] | None) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) as native ones (arguments as an object)."""
    native: list[dict[str, Any]] = []
    for call in calls or []:
        function = call.function or ToolCallFunction()
        try:
            arguments = orjson.loads(function.arguments or "")
        except orjson.JSONDecodeError as exc:
            raise invalid_request(INVALID_TOOL_ARGUMENTS, param="messages") from exc
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise invalid_request(INVALID_TOOL_ARGUMENTS, param="messages")
        entry: dict[str, Any] = {}
        if call.id:
            entry["id"] = call.id
        entry["function"] = {"index": 0, "name": function.name or "", "arguments": arguments}
        native.append(entry)
    return native


def name_tool_results(messages: list[dict[str, Any]]) -> None:
    """Name each tool result that has a `tool_call_id` but no `tool_name` after the call it
    answers, anywhere in the conversation (the last one wins), as Ollama's /v1 layer does
    (`nameFromToolCallID`). The request's own messages were named when translated; in a session
    the call is in the stored history, which the translation never saw, and the model's template
    would get a tool result that names no tool."""
    for message in messages:
        call_id = message.get("tool_call_id")
        if str(message.get("role", "")).lower() != "tool" or message.get("tool_name"):
            continue
        if isinstance(call_id, str) and call_id:
            name = _called_name(messages, call_id)
            if name:
                message["tool_name"] = name


def _called_name(messages: list[dict[str, Any]], tool_call_id: str) -> str:
    for message in reversed(messages):
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict) and call.get("id") == tool_call_id:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                return name if isinstance(name, str) else ""
    return ""


def _name_from_tool_call_id(messages: list[Message], tool_call_id: str) -> str:
    # Backwards: with duplicate ids the last one wins, as in Ollama.
    for message in reversed(messages):
        for call in message.tool_calls or []:
            if call.id == tool_call_id:
                return (call.function.name if call.function else None) or ""
    return ""


def _tool(tool: Tool) -> dict[str, Any]:
    """An api.Tool as Go encodes it; fields Ollama's struct lacks (`strict`) are dropped."""
    function = tool.function or ToolFunction()
    parameters = function.parameters or ToolParameters()
    native_parameters: dict[str, Any] = {"type": parameters.type or ""}
    if parameters.defs is not None:
        native_parameters["$defs"] = parameters.defs
    if parameters.items is not None:
        native_parameters["items"] = parameters.items
    if parameters.required:
        native_parameters["required"] = parameters.required
    native_parameters["properties"] = parameters.properties
    native_function: dict[str, Any] = {"name": function.name or ""}
    if function.description:
        native_function["description"] = function.description
    native_function["parameters"] = native_parameters
    native: dict[str, Any] = {"type": tool.type or ""}
    if tool.items is not None:
        native["items"] = tool.items
    native["function"] = native_function
    return native


def _stop_list(stop: Any, *, strict: bool) -> list[str] | None:
    """`stop` as a list of strings. A chat request skips non-strings in the list; a completion
    request refuses them, both as Ollama does. Other kinds mean no stop sequences."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    stops: list[str] = []
    for item in stop:
        if isinstance(item, str):
            stops.append(item)
        elif strict:
            raise invalid_request(
                f"invalid type for 'stop' field: {_go_type_name(item)}", param="stop"
            )
    return stops


__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "CorralFields",
    "EmbeddingRequest",
    "OpenAIError",
    "decode_image_url",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "think_from_effort",
]
