"""An OpenAI-compatible API, as llama.cpp's `llama-server`, llama-cpp-python's server or Ollama's
own `/v1` serve it: `/v1/chat/completions`, `/v1/completions` (streamed as server-sent events,
`usage` in the last chunk when `stream_options.include_usage` asks for it, and in every
non-streamed answer), `/v1/models` and `/v1/embeddings`.

The same deterministic model answers (`"Echo: "` + the last user message or the prompt, cut at
`max_tokens`), through the same machinery as `/api/chat` (runner load, prompt time, the token
delay knobs, injected failures, the concurrency record), so a test can compute what Corral's
OpenAI-compatible backend will get. Like these servers, it reports no durations: a client
(Corral) measures them itself. `--openai-only` serves only this API, as llama-cpp-python does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from corral_emulator.api_types import parse_chat_request, parse_generate_request
from corral_emulator.chunks import NO_EXTRAS, Extras, Metrics
from corral_emulator.embedding import float32_json, normalized_embedding
from corral_emulator.embedding_routes import _run as run_embedding
from corral_emulator.generation import GenerationJob, run_generation
from corral_emulator.models import ModelSpec
from corral_emulator.reply_plan import (
    ReplyPlan,
    context_length_for,
    model_options,
    plan_chat_reply,
    plan_generate_reply,
)
from corral_emulator.state import STATE_KEY, EmulatorState
from corral_emulator.timestamps import unix_seconds
from corral_emulator.wire import ApiError, decode_json_object, json_response


def openai_error(status: int, message: str, code: str | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": "invalid_request_error"}
    if code is not None:
        error["code"] = code
    return json_response({"error": error}, status=status)


@dataclass(frozen=True, slots=True)
class OpenAIChunks:
    """A ChunkShape (chunks.py) in OpenAI's shapes: chat completion chunks, or text completion
    ones (`text` on the choice) for /v1/completions."""

    model: str
    stream: bool
    include_usage: bool
    text_completion: bool = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.text_completion:
            choice: dict[str, Any] = {"index": 0, "text": delta.get("content", "")}
            obj = "text_completion"
        else:
            choice = {"index": 0, "delta": delta}
            obj = "chat.completion.chunk"
        choice["finish_reason"] = finish_reason
        return {
            "id": "chatcmpl-emulator",
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }

    def token(self, text: str) -> dict[str, object]:
        return self._chunk({"content": text})

    def thinking(self, text: str) -> dict[str, object]:
        return self._chunk({"reasoning_content": text})

    def tool_calls(self, calls: tuple[dict[str, Any], ...]) -> dict[str, object]:
        return self._chunk({"tool_calls": _tool_calls(calls, indexed=True)})

    def final(
        self,
        text: str,
        done_reason: str,
        metrics: Metrics,
        context: tuple[int, ...] | None,
        extras: Extras = NO_EXTRAS,
    ) -> dict[str, object]:
        reason = "length" if done_reason == "length" else "stop"
        usage = {
            "prompt_tokens": metrics.prompt_eval_count,
            "completion_tokens": metrics.eval_count,
            "total_tokens": metrics.prompt_eval_count + metrics.eval_count,
        }
        if self.stream:
            chunk = self._chunk({}, reason)
            if self.include_usage:
                chunk["usage"] = usage
            return chunk
        if self.text_completion:
            choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": reason}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if extras.thinking:
                message["reasoning_content"] = extras.thinking
            if extras.tool_calls:
                message["tool_calls"] = _tool_calls(extras.tool_calls, indexed=False)
                reason = "tool_calls"
            choice = {"index": 0, "message": message, "finish_reason": reason}
        return {
            "id": "chatcmpl-emulator",
            "object": "text_completion" if self.text_completion else "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": usage,
        }

    def bare_done(self, done_reason: str) -> dict[str, object]:
        return self._chunk({}, done_reason)


def _tool_calls(calls: tuple[dict[str, Any], ...], *, indexed: bool) -> list[dict[str, Any]]:
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        one: dict[str, Any] = {
            "id": f"call_{index}",
            "type": "function",
            "function": {
                "name": function.get("name"),
                "arguments": orjson.dumps(function.get("arguments") or {}).decode(),
            },
        }
        if indexed:
            one["index"] = index
        out.append(one)
    return out


def _text(content: Any) -> str:
    """A message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if isinstance(body.get("max_tokens"), int):
        options["num_predict"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k", "seed", "stop"):
        if body.get(name) is not None:
            options[name] = body[name]
    return options


def _format(body: dict[str, Any]) -> Any:
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    schema = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return schema.get("schema")
    return None


def _find(state: EmulatorState, name: object) -> ModelSpec:
    spec = state.catalogue.find(str(name or ""))
    if spec is None:
        raise ApiError(404, f"model '{name}' not found")
    return spec


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return stream, usage


async def chat_completions(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "ChatCompletionRequest")
        state.requests.record("v1_chat", body)
        spec = _find(state, body.get("model"))
        messages = [
            {
                "role": str(m.get("role") or "user"),
                "content": _text(m.get("content")),
            }
            for m in body.get("messages") or []
            if isinstance(m, dict)
        ]
        if not messages:
            raise ApiError(400, "'messages' must contain at least one message")
        native: dict[str, Any] = {
            "model": body.get("model"),
            "messages": messages,
            "options": _options(body),
        }
        if isinstance(body.get("tools"), list):
            native["tools"] = body["tools"]
        if _format(body) is not None:
            native["format"] = _format(body)
        parsed = parse_chat_request(native)
        plan = plan_chat_reply(parsed, spec, model_options(spec, parsed.options))
        stream, usage = _streaming(body)
        shape = OpenAIChunks(str(body.get("model")), stream, usage)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)
    return await run_generation(
        request, state, _sse_job(state, "chat", parsed.model, spec, plan, shape, started_ns)
    )


async def completions(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "CompletionRequest")
        state.requests.record("v1_completions", body)
        spec = _find(state, body.get("model"))
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string")
        native = {
            "model": body.get("model"),
            "prompt": prompt,
            "raw": True,
            "options": _options(body),
        }
        parsed = parse_generate_request(native)
        plan = plan_generate_reply(parsed, spec, model_options(spec, parsed.options))
        stream, usage = _streaming(body)
        shape = OpenAIChunks(str(body.get("model")), stream, usage, text_completion=True)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)
    return await run_generation(
        request, state, _sse_job(state, "generate", parsed.model, spec, plan, shape, started_ns)
    )


def _sse_job(
    state: EmulatorState,
    kind: str,
    model: str,
    spec: ModelSpec,
    plan: ReplyPlan,
    shape: OpenAIChunks,
    started_ns: int,
) -> GenerationJob:
    """A /v1 generation as the native runner takes it: streamed as SSE, no keep_alive."""
    return GenerationJob(
        model=model,
        spec=spec,
        plan=plan,
        keep_alive=None,
        stream=shape.stream,
        shape=shape,
        failure=state.failures.take(kind, model),
        started_ns=started_ns,
        sse=True,
        endpoint=f"v1_{'chat' if kind == 'chat' else 'completions'}",
    )


async def models(request: web.Request) -> web.Response:
    catalogue = request.app[STATE_KEY].catalogue
    data = [
        {
            "id": spec.full_name,
            "object": "model",
            "created": unix_seconds(spec.modified_at),
            "owned_by": "library",
        }
        for spec in catalogue.listing()
    ]
    return json_response({"object": "list", "data": data})


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "EmbeddingRequest")
        state.requests.record("v1_embeddings", body)
        spec = _find(state, body.get("model"))
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "invalid input type")
        context_length = context_length_for(spec, model_options(spec, {}))
        run = await run_embedding(state, spec, context_length, None, texts, True)
    except ApiError as exc:
        return openai_error(exc.status, exc.message)
    requested = body.get("dimensions")
    dimensions = requested if isinstance(requested, int) else 0
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": [
                float32_json(v)
                for v in normalized_embedding(text, spec.embedding_length, dimensions)
            ],
        }
        for index, text in enumerate(run.texts)
    ]
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {
                "prompt_tokens": run.prompt_eval_count,
                "total_tokens": run.prompt_eval_count,
            },
        }
    )


def add_openai_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/completions", completions)
    router.add_get("/v1/models", models)
    router.add_post("/v1/embeddings", embeddings)
