"""Bytes on the wire: JSON bodies decoded the way Go's `encoding/json` reports errors, and the
response shapes (JSON, NDJSON lines, gin's plain-text bodies) Ollama sends."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from aiohttp import web

NDJSON_CONTENT_TYPE = "application/x-ndjson"


class ApiError(Exception):
    """Becomes Ollama's `{"error": message}` with the given status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def dumps(value: object) -> bytes:
    return orjson.dumps(value)


def ndjson_line(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)


def json_response(value: object, status: int = 200) -> web.Response:
    # gin's c.JSON content type, charset included.
    return web.Response(
        status=status, body=dumps(value), content_type="application/json", charset="utf-8"
    )


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def plain_json_response(value: object, status: int = 200) -> web.Response:
    """JSON labelled bare `application/json`: what gin sends when a handler set that header
    before `c.JSON` (Ollama's progress endpoints: pull and create)."""
    return web.Response(
        status=status, body=dumps(value), headers={"Content-Type": "application/json"}
    )


def empty_response() -> web.Response:
    """A 200 with no body and no content type: a gin handler that wrote nothing (copy, delete)."""
    return web.Response(status=200)


class NdjsonWriter:
    """Starts the 200 NDJSON response lazily, so errors before the first line can still be
    answered with a proper status, as Ollama does."""

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def send(self, chunk: object) -> None:
        if self.response is None:
            response = web.StreamResponse()
            response.content_type = NDJSON_CONTENT_TYPE
            self.response = response
            await response.prepare(self._request)
        await self.response.write(ndjson_line(chunk))

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response


def gin_plain_text(status: int, text: str) -> web.Response:
    # gin's router fallbacks send bare "text/plain", with no charset parameter.
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": "text/plain"})


def decode_json_object(raw: bytes, go_type: str) -> dict[str, Any]:
    """Decode a request body as gin's ShouldBindJSON would, raising ApiError(400) on failure.

    `go_type` names the target struct (e.g. "ChatRequest") for Go's type-mismatch message.
    """
    if not raw.strip(b" \t\r\n"):
        raise ApiError(400, "missing request body")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _decode_like_go(raw)
    if not isinstance(value, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {json_kind(value)} into Go value of type api.{go_type}"
        )
    return value


def go_quote(text: str) -> str:
    """Go's `%q` for the texts that reach it here (printable text, common escapes)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return '"' + "".join(escapes.get(char, char) for char in text) + '"'


def json_kind(value: object) -> str:
    """The JSON value kind as Go's decoder names it in type errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_WHITESPACE = " \t\r\n"


def _decode_like_go(raw: bytes) -> Any:
    """Slow path for bodies orjson refuses: accept what Go accepts, word errors as Go does.

    Go's json.Decoder reads one value and ignores what follows it, and replaces invalid
    UTF-8 and lone surrogates with U+FFFD instead of failing.
    """
    text = raw.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip(_GO_WHITESPACE))
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _go_syntax_message(exc)) from None
    return _replace_surrogates(value)


def _go_syntax_message(exc: json.JSONDecodeError) -> str:
    text, pos = exc.doc, exc.pos
    if pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _go_quote_char(text[pos])
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if exc.msg.startswith("Expecting ','"):
        in_object = _innermost_container(text, pos) == "{"
        where = "object key:value pair" if in_object else "array element"
        return f"invalid character {char} after {where}"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if exc.msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if exc.msg.startswith("Invalid \\escape"):
        return f"invalid character {char} in string escape code"
    return f"invalid character {char} looking for beginning of value"


def _go_quote_char(char: str) -> str:
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + repr(char)[1:-1] + "'"


def _innermost_container(text: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


class SseWriter(NdjsonWriter):
    """An OpenAI stream: each chunk a server-sent event (`data: <json>` and a blank line), the
    stream ended by `data: [DONE]`, as OpenAI-compatible servers send it."""

    async def send(self, chunk: object) -> None:
        if self.response is None:
            response = web.StreamResponse()
            response.content_type = "text/event-stream"
            self.response = response
            await response.prepare(self._request)
        await self.response.write(b"data: " + dumps(chunk) + b"\n\n")

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response
