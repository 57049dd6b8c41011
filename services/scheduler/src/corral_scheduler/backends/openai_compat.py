"""An OpenAI-compatible backend: llama.cpp's `llama-server`, llama-cpp-python's server, vLLM, LM
Studio, any server with `/v1/chat/completions`. Corral keeps serving Ollama's API in front; the
lane's jobs (Ollama-shaped) are translated here and the answers turned back into Ollama's
chunks, so the gateway relays them unchanged.

Requests (`chat_request`, `completion_request`):
- chat → `POST /v1/chat/completions`. Messages keep their role and content; a message's
  `images` (base64, as Ollama takes them) become `image_url` parts with data URLs (only
  multimodal servers accept them); an assistant's `tool_calls` become OpenAI's (arguments as a
  JSON string, ids made up), and a `tool` message answers the call it follows.
- generate → `POST /v1/completions` when `raw` (the prompt goes as written, no template);
  otherwise `/v1/chat/completions` with `system` and the prompt as a user message, because
  Ollama applies the model's template to a non-raw prompt and a chat request is how an OpenAI
  server does that. Streamed back as generate chunks (`response`). `suffix`, `context` and
  `template` have no OpenAI equivalent and are not sent (no `context` comes back).
- options → sampling parameters, only where the meaning is the same (`OPTION_PARAMETERS`):
  temperature, top_p, seed, stop, frequency_penalty and presence_penalty are OpenAI's own;
  num_predict → max_tokens (a positive one; -1/-2, "until done", sends none, and `null` to
  /v1/completions, whose default is 16 tokens); top_k, min_p,
  typical_p and repeat_penalty go under their own names, which llama.cpp's server,
  llama-cpp-python and vLLM (`top_k`, `min_p`; `repeat_penalty` is llama.cpp's) accept as
  extensions. repeat_penalty is NOT sent as frequency_penalty: one divides a repeated token's
  logit, the other subtracts a count-scaled amount, and no value of one equals the other.
  Load-time options (num_ctx, num_gpu, num_thread, ...) and keep_alive are the server's own
  start-up settings and are dropped.
- `format` → `response_format` (response_format.py): "json" → `{"type": "json_object",
  "schema": {"type": "object"}}`; a JSON schema → OpenAI's `{"type": "json_schema",
  "json_schema": {"name": "response", "schema": ..., "strict": true}}`, and, where the server
  refuses that (llama-cpp-python), `{"type": "json_object", "schema": ...}` from then on.
- `tools` are OpenAI's shape already and go as they are.

Answers (`ChunkTranslator`): every SSE `data:` chunk's `delta.content` becomes one Ollama chunk
(`delta.reasoning_content`, which llama.cpp and vLLM send for thinking models, becomes
`thinking`); tool-call fragments are gathered and handed over in one chunk before the last, as
Ollama does. The final chunk carries `done`, `done_reason` (`length` when the server stopped at
max_tokens, else `stop`), `prompt_eval_count` and `eval_count` from `usage` (asked for with
`stream_options.include_usage`) and durations from llama.cpp's `timings` when the server sends
them; where it reports none, Corral measures them: prompt evaluation until the first token,
generation from the first token to the last, total from the request to the end, and counts one
token per content chunk, which is what these servers stream.

Load and unload have no OpenAI endpoint: the server holds the model it was started with, so
they are answered at once as Ollama answers its load idiom (an empty `done` with `done_reason`
`load` or `unload`). Failures are the lane's usual ones (base.py): an OpenAI error body's
`error.message` is passed with the server's status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from corral_common.errors import CorralError, ErrorType
from corral_common.ollama import UNREACHABLE_ERRORS, unreachable
from corral_common.ollama_shapes import Message, ToolCall
from corral_common.openai_models import (
    auth_headers,
    ps_entries,
    server_root,
    show_answer,
    tags_entries,
)
from corral_scheduler.backends.base import (
    BackendKind,
    BackendStreamError,
    Chunk,
    DoneAnswer,
    EmbedAnswer,
    EmbeddingsAnswer,
    EmbedKind,
    RunningModel,
    ShowAnswer,
    StreamKind,
    TagEntry,
)
from corral_scheduler.backends.ollama import ndjson_lines
from corral_scheduler.backends.response_format import (
    refuses_response_format,
    response_format,
    schema_in_json_object,
)
from corral_scheduler.load_guard import keep_alive_seconds

# Ollama's options with the same meaning in an OpenAI request, and the parameter they become.
OPTION_PARAMETERS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    # Extensions the llama.cpp family and vLLM accept under Ollama's own names.
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
}
# What an OpenAI-compatible server reports as its version: it has no version endpoint, and
# Ollama clients parse /api/version as a semantic version (Ollama's development builds say this).
VERSION = "0.0.0"
NS_PER_MS = 1_000_000
# How errors name the server ("Cannot connect to OpenAI-compatible server. ...").
SERVER = "OpenAI-compatible"

_IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lGOD": "image/gif",
    "UklGR": "image/webp",
}


def image_url(image: str) -> str:
    """An Ollama image (base64) as a data URL, its type told by its first bytes."""
    if image.startswith("data:"):
        return image
    media = next((t for prefix, t in _IMAGE_TYPES.items() if image.startswith(prefix)), "image/png")
    return f"data:{media};base64,{image}"


def _content(text: Any, images: Any) -> Any:
    if not isinstance(images, list) or not images:
        return text if isinstance(text, str) else ""
    parts: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        parts.append({"type": "text", "text": text})
    parts += [
        {"type": "image_url", "image_url": {"url": image_url(image)}}
        for image in images
        if isinstance(image, str)
    ]
    return parts


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Ollama's chat messages as OpenAI's."""
    translated: list[dict[str, Any]] = []
    pending_calls: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "user")
        out: dict[str, Any] = {
            "role": role,
            "content": _content(message.get("content"), message.get("images")),
        }
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            out["tool_calls"] = []
            pending_calls = []
            for number, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                call_id = f"call_{index}_{number}"
                arguments = function.get("arguments")
                out["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function.get("name"),
                            "arguments": arguments
                            if isinstance(arguments, str)
                            else orjson.dumps(arguments or {}).decode(),
                        },
                    }
                )
                pending_calls.append(call_id)
        if role == "tool":
            if pending_calls:
                out["tool_call_id"] = pending_calls.pop(0)
            if isinstance(message.get("tool_name"), str):
                out["name"] = message["tool_name"]
        translated.append(out)
    return translated


def sampling(payload: dict[str, Any]) -> dict[str, Any]:
    """The request's options, format and tools as OpenAI parameters (see the module doc)."""
    options = payload.get("options")
    options = options if isinstance(options, dict) else {}
    params: dict[str, Any] = {
        OPTION_PARAMETERS[name]: value
        for name, value in options.items()
        if name in OPTION_PARAMETERS and value is not None
    }
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict > 0:
        params["max_tokens"] = num_predict
    format_ = response_format(payload.get("format"))
    if format_ is not None:
        params["response_format"] = format_
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        params["tools"] = tools
    return params


def chat_request(payload: dict[str, Any]) -> dict[str, Any]:
    """An Ollama chat as `/v1/chat/completions` (streamed, usage included)."""
    messages = payload.get("messages")
    return {
        "model": payload.get("model"),
        "messages": chat_messages(messages if isinstance(messages, list) else []),
        **sampling(payload),
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def completion_request(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An Ollama generate as the OpenAI request that does the same: the path and body."""
    prompt = str(payload.get("prompt") or "")
    if payload.get("raw"):
        return "/v1/completions", {
            "model": payload.get("model"),
            "prompt": prompt,
            # OpenAI's /v1/completions (and llama-cpp-python's) stop at 16 tokens unless told
            # otherwise; Ollama's generate runs until done: null says "no limit".
            "max_tokens": None,
            **sampling(payload),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    messages: list[dict[str, Any]] = []
    system = payload.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt, "images": payload.get("images")})
    return "/v1/chat/completions", chat_request({**payload, "messages": messages})


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def bare_done(kind: StreamKind, model: str, done_reason: str) -> Chunk:
    """Ollama's answer to a load or unload through chat or generate."""
    if kind == "chat":
        return {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": done_reason,
            "done": True,
        }
    return {
        "model": model,
        "created_at": _now(),
        "response": "",
        "done": True,
        "done_reason": done_reason,
    }


@dataclass
class _ToolCall:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class ChunkTranslator:
    """OpenAI stream chunks in, Ollama chunks out, for one chat or generate."""

    kind: StreamKind
    model: str
    clock: Any = time.perf_counter_ns
    started_ns: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    chunks: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.started_ns:
            self.started_ns = self.clock()

    def feed(self, data: dict[str, Any]) -> list[Chunk]:
        """One SSE chunk's Ollama chunks (none, or one per piece of text)."""
        error = data.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise BackendStreamError(str(message or error))
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        if isinstance(data.get("timings"), dict):
            self.timings = data["timings"]
        out: list[Chunk] = []
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                # /v1/completions streams `text` on the choice itself.
                delta = {"content": choice.get("text")}
            thinking = delta.get("reasoning_content")
            if isinstance(thinking, str) and thinking:
                out.append(self._piece("", thinking))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._piece(content, ""))
            for call in delta.get("tool_calls") or []:
                self._gather(call)
        return out

    def _gather(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        index = call.get("index", len(self.tool_calls))
        gathered = self.tool_calls.setdefault(index if isinstance(index, int) else 0, _ToolCall())
        function = call.get("function") or {}
        if isinstance(function.get("name"), str) and function["name"]:
            gathered.name = function["name"]
        if isinstance(function.get("arguments"), str):
            gathered.arguments.append(function["arguments"])

    def _piece(self, content: str, thinking: str) -> Chunk:
        now = self.clock()
        if self.first_ns is None:
            self.first_ns = now
        self.last_ns = now
        self.chunks += 1
        if self.kind == "chat":
            message: Message = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return {"model": self.model, "created_at": _now(), "message": message, "done": False}
        # Generate's field order: `thinking` between `response` and `done`.
        if thinking:
            return {
                "model": self.model,
                "created_at": _now(),
                "response": content,
                "thinking": thinking,
                "done": False,
            }
        return {"model": self.model, "created_at": _now(), "response": content, "done": False}

    def tool_call_chunk(self) -> Chunk | None:
        """The gathered tool calls, in one chunk of their own (as Ollama hands them over)."""
        if not self.tool_calls:
            return None
        calls: list[ToolCall] = []
        for _, call in sorted(self.tool_calls.items()):
            text = "".join(call.arguments)
            try:
                arguments = orjson.loads(text) if text.strip() else {}
            except orjson.JSONDecodeError:
                arguments = text
            calls.append({"function": {"name": call.name, "arguments": arguments}})
        if self.kind == "chat":
            message: Message = {"role": "assistant", "content": "", "tool_calls": calls}
            return {"model": self.model, "created_at": _now(), "message": message, "done": False}
        return {
            "model": self.model,
            "created_at": _now(),
            "response": "",
            "done": False,
            "tool_calls": calls,
        }

    def final(self) -> Chunk:
        """The `done` chunk: the reason, the counts and the durations."""
        end = self.clock()
        chunk = bare_done(
            self.kind, self.model, "length" if self.finish_reason == "length" else "stop"
        )
        first = self.first_ns if self.first_ns is not None else end
        last = self.last_ns if self.last_ns is not None else end
        prompt_ns = _ms_ns(self.timings.get("prompt_ms")) or max(first - self.started_ns, 1)
        eval_ns = _ms_ns(self.timings.get("predicted_ms")) or max(last - first, 1)
        prompt_count = _count(self.usage.get("prompt_tokens"), self.timings.get("prompt_n"))
        eval_count = _count(self.usage.get("completion_tokens"), self.timings.get("predicted_n"))
        total_ns = max(end - self.started_ns, 1)
        if eval_count is None:
            eval_count = self.chunks
        # After the done fields, in Ollama's order; Ollama leaves out zero metrics
        # (omitempty), and so does this.
        if total_ns:
            chunk["total_duration"] = total_ns
        if prompt_count:
            chunk["prompt_eval_count"] = prompt_count
        if prompt_ns:
            chunk["prompt_eval_duration"] = prompt_ns
        if eval_count:
            chunk["eval_count"] = eval_count
        if eval_ns:
            chunk["eval_duration"] = eval_ns
        return chunk


def _ms_ns(value: Any) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return max(1, round(value * NS_PER_MS))
    return 0


def _count(*values: Any) -> int | None:
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool)), None)


def embed_request(kind: EmbedKind, payload: dict[str, Any]) -> dict[str, Any] | None:
    """`/api/embed` or `/api/embeddings` as `/v1/embeddings`; None when there is nothing to
    embed (Ollama's load idiom)."""
    text = payload.get("input") if kind == "embed" else payload.get("prompt")
    if not text:
        return None
    body: dict[str, Any] = {"model": payload.get("model"), "input": text}
    if kind == "embed" and isinstance(payload.get("dimensions"), int):
        body["dimensions"] = payload["dimensions"]
    return body


def embed_answer(
    kind: EmbedKind, model: str, answer: Any, started_ns: int, ended_ns: int
) -> EmbedAnswer | EmbeddingsAnswer:
    """A `/v1/embeddings` answer in `/api/embed`'s shape (or the legacy one's)."""
    data = answer.get("data") if isinstance(answer, dict) else None
    entries = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    # Each entry's vector as the server wrote it: unchecked, as every answer is (base.py).
    vectors: list[Any] = [
        e.get("embedding") for e in sorted(entries, key=lambda e: e.get("index", 0))
    ]
    if kind == "embeddings":
        return {"embedding": vectors[0] if vectors else []}
    out: EmbedAnswer = {
        "model": model,
        "embeddings": vectors,
        "total_duration": max(ended_ns - started_ns, 1),
    }
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        out["prompt_eval_count"] = usage["prompt_tokens"]
    return out


async def openai_status_error(response: aiohttp.ClientResponse) -> CorralError:
    """A non-200 answer: the server's status, and its `error.message` (OpenAI's error shape)
    or its text."""
    raw = await response.read()
    message = ""
    try:
        body = orjson.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        message = str(error.get("message") if isinstance(error, dict) else error or "")
    except orjson.JSONDecodeError:
        pass
    message = message or raw.decode(errors="replace").strip() or response.reason or "error"
    error_type = ErrorType.MODEL_NOT_FOUND if response.status == 404 else ErrorType.BACKEND_ERROR
    return CorralError(error_type, message, status=response.status)


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's `data:` lines, to `[DONE]`."""
    try:
        async for line in ndjson_lines(response.content):
            text = line.strip()
            if not text.startswith(b"data:"):
                continue
            data = text[5:].strip()
            if data == b"[DONE]":
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BackendStreamError("backend sent an unreadable stream chunk") from exc
            if isinstance(chunk, dict):
                yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise BackendStreamError(f"backend stream broke off: {exc or type(exc).__name__}") from exc


class OpenAIBackend:
    kind: BackendKind = "openai"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        api_key: str | None = None,
    ) -> None:
        self._session = session
        self.base_url = server_root(base_url)
        self._headers = {"Content-Type": "application/json", **auth_headers(api_key)}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._probe = aiohttp.ClientTimeout(total=2.0)
        # Set once the server has refused a schema in OpenAI's shape (llama-cpp-python): its
        # requests carry schemas in the llama family's shape from then on.
        self._schema_in_json_object = False

    @asynccontextmanager
    async def stream(
        self, kind: StreamKind, payload: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        model = str(payload.get("model") or "")
        empty = not payload.get("messages") if kind == "chat" else not payload.get("prompt")
        if empty:
            # Ollama's load idiom (keep_alive 0: unload): the server holds its model already.
            unload = keep_alive_seconds(payload.get("keep_alive")) == 0.0
            yield _once(bare_done(kind, model, "unload" if unload else "load"))
            return
        if kind == "chat":
            path, body = "/v1/chat/completions", chat_request(payload)
        else:
            path, body = completion_request(payload)
        translator = ChunkTranslator(kind, model)
        response = await self._generation(path, body)
        try:
            yield _translated(sse_data(response), translator)
        finally:
            response.close()

    async def embed(
        self, kind: EmbedKind, payload: dict[str, Any]
    ) -> EmbedAnswer | EmbeddingsAnswer:
        model = str(payload.get("model") or "")
        body = embed_request(kind, payload)
        if body is None:
            if kind == "embed":
                return {"model": model, "embeddings": []}
            return {"embedding": []}
        started = time.perf_counter_ns()
        answer = await self._json("/v1/embeddings", body)
        return embed_answer(kind, model, answer, started, time.perf_counter_ns())

    async def load(self, payload: dict[str, Any]) -> DoneAnswer:
        return bare_done("generate", str(payload.get("model") or ""), "load")

    async def unload(self, payload: dict[str, Any]) -> DoneAnswer:
        return bare_done("generate", str(payload.get("model") or ""), "unload")

    async def list_models(self) -> list[TagEntry]:
        return tags_entries(await self._models())

    async def running(self) -> list[RunningModel]:
        return ps_entries(await self._models())

    async def show(self, model: str) -> ShowAnswer:
        return show_answer(await self._models(), model)

    async def version(self) -> str:
        await self._models()
        return VERSION

    async def _models(self) -> Any:
        try:
            async with self._session.get(
                f"{self.base_url}/v1/models", headers=self._headers, timeout=self._probe
            ) as response:
                if response.status != 200:
                    raise await openai_status_error(response)
                return await response.json(content_type=None)
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc, SERVER) from exc

    async def _post(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        try:
            return await self._session.post(
                f"{self.base_url}{path}",
                data=orjson.dumps(body),
                headers=self._headers,
                timeout=self._timeout,
            )
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc, SERVER) from exc

    async def _generation(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The server's 200 to a generation; a schema it refuses in OpenAI's shape is sent
        again in the other (response_format.py), which it is sent in from then on."""
        other = schema_in_json_object(body)
        if other is not None and self._schema_in_json_object:
            body, other = other, None
        response = await self._post(path, body)
        if response.status == 200:
            return response
        try:
            refusal = await openai_status_error(response)
        finally:
            response.close()
        if other is None or not refuses_response_format(refusal):
            raise refusal
        self._schema_in_json_object = True
        response = await self._post(path, other)
        if response.status != 200:
            try:
                raise await openai_status_error(response)
            finally:
                response.close()
        return response

    async def _json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self._post(path, body)
        try:
            if response.status != 200:
                raise await openai_status_error(response)
            return orjson.loads(await response.read())
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc, SERVER) from exc
        except orjson.JSONDecodeError as exc:
            raise CorralError(
                ErrorType.BACKEND_ERROR, f"backend answered {path} with invalid JSON"
            ) from exc
        finally:
            response.close()


async def _once(chunk: Chunk) -> AsyncIterator[Chunk]:
    yield chunk


async def _translated(
    data: AsyncIterator[dict[str, Any]], translator: ChunkTranslator
) -> AsyncIterator[Chunk]:
    async for one in data:
        for chunk in translator.feed(one):
            yield chunk
    calls = translator.tool_call_chunk()
    if calls is not None:
        yield calls
    yield translator.final()
