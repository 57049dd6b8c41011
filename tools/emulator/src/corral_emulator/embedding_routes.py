"""POST /api/embed and the legacy POST /api/embeddings: validation in Ollama's order, then the
model is loaded through the runner pool like a generation (keep_alive applies) and the work is
an `embed` operation in the concurrency record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from corral_emulator.activity import OperationKind, Outcome
from corral_emulator.api_types import parse_embed_request, parse_embedding_request
from corral_emulator.durations import KeepAlive
from corral_emulator.embedding import float32_json, normalized_embedding, raw_embedding
from corral_emulator.model_loading import load_model
from corral_emulator.model_names import is_valid_model_name
from corral_emulator.models import ModelSpec
from corral_emulator.reply_plan import CONTEXT_EXCEEDED, context_length_for, model_options
from corral_emulator.state import STATE_KEY, EmulatorState, GatePurpose
from corral_emulator.tokens import tokenize
from corral_emulator.wire import ApiError, decode_json_object, error_response, json_response

INVALID_INPUT = "invalid input type"


@dataclass(frozen=True, slots=True)
class EmbeddingRun:
    texts: tuple[str, ...]
    """As embedded: cut to the context window when truncation applied."""
    prompt_eval_count: int
    load_ns: int


async def embed(request: web.Request) -> web.Response:
    started_ns = time.perf_counter_ns()
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "EmbedRequest")
        state.requests.record("embed", body)
        parsed = parse_embed_request(body)
        texts = _inputs(parsed.input)
        spec = _find_model(state, parsed.model)
        context_length = context_length_for(spec, model_options(spec, parsed.options))
        if not texts:
            await load_model(state, spec, context_length, parsed.keep_alive)
            return json_response({"model": parsed.model, "embeddings": []})
        run = await _run(state, spec, context_length, parsed.keep_alive, texts, parsed.truncate)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    length, dimensions = spec.embedding_length, parsed.dimensions
    vectors = [
        [float32_json(value) for value in normalized_embedding(text, length, dimensions)]
        for text in run.texts
    ]
    answer: dict[str, object] = {
        "model": parsed.model,
        "embeddings": vectors,
        "total_duration": time.perf_counter_ns() - started_ns,
        "load_duration": max(run.load_ns, 1),
    }
    # omitempty in Go's EmbedResponse: an input of empty strings has no count.
    if run.prompt_eval_count:
        answer["prompt_eval_count"] = run.prompt_eval_count
    return json_response(answer)


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "EmbeddingRequest")
        state.requests.record("embeddings", body)
        parsed = parse_embedding_request(body)
        if not is_valid_model_name(parsed.model):
            raise ApiError(400, "model is required")
        spec = _find_model(state, parsed.model)
        context_length = context_length_for(spec, model_options(spec, parsed.options))
        if not parsed.prompt:
            await load_model(state, spec, context_length, parsed.keep_alive)
            return json_response({"embedding": []})
        run = await _run(state, spec, context_length, parsed.keep_alive, [parsed.prompt], True)
    except ApiError as exc:
        return error_response(exc.status, exc.message)
    # Not normalised, and float64 in Go: the float32 values print at full float64 length.
    return json_response({"embedding": raw_embedding(run.texts[0], spec.embedding_length)})


def _inputs(value: object) -> list[str]:
    """EmbedRequest.input: a string (empty means none) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ApiError(400, INVALID_INPUT)


def _find_model(state: EmulatorState, name: str) -> ModelSpec:
    spec = state.catalogue.find(name)
    if spec is None:
        # The scheduler's wording (handleScheduleError), unlike chat's and generate's.
        raise ApiError(404, f'model "{name}" not found, try pulling it first')
    return spec


async def _run(
    state: EmulatorState,
    spec: ModelSpec,
    context_length: int,
    keep_alive: KeepAlive | None,
    texts: Sequence[str],
    truncate: bool,
) -> EmbeddingRun:
    ticket = state.activity.start(spec.full_name, OperationKind.EMBED)
    try:
        load_started = time.perf_counter_ns()
        runner = await state.runners.acquire(spec, context_length, keep_alive)
        try:
            load_ns = time.perf_counter_ns() - load_started
            await state.gate.pass_through(GatePurpose.EMBED)
            cut = [_fit(text, context_length, truncate) for text in texts]
            prompt_eval_count = sum(count for _, count in cut)
            milliseconds = state.config.prompt_ms_per_token * prompt_eval_count
            if milliseconds > 0:
                await asyncio.sleep(milliseconds / 1000)
        finally:
            state.runners.release(runner)
        ticket.finish(Outcome.COMPLETED)
        return EmbeddingRun(tuple(text for text, _ in cut), prompt_eval_count, load_ns)
    except asyncio.CancelledError:
        ticket.finish(Outcome.CANCELLED)
        raise
    finally:
        ticket.finish(Outcome.FAILED)


def _fit(text: str, context_length: int, truncate: bool) -> tuple[str, int]:
    """The text as embedded and its token count; too long fails unless truncating."""
    tokens = tokenize(text)
    if len(tokens) <= context_length:
        return text, len(tokens)
    if not truncate:
        raise ApiError(400, CONTEXT_EXCEEDED)
    return "".join(tokens[:context_length]), context_length
