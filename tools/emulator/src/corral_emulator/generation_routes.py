"""POST /api/chat and POST /api/generate: validation in Ollama's order, then generation."""

from __future__ import annotations

import time

from aiohttp import web

from corral_emulator.api_types import (
    GenerationRequest,
    Options,
    parse_chat_request,
    parse_generate_request,
)
from corral_emulator.chunks import ChatChunks, ChunkShape, GenerateChunks
from corral_emulator.generation import GenerationJob, run_generation, run_load, run_unload
from corral_emulator.models import ModelSpec
from corral_emulator.reply_plan import (
    ReplyPlan,
    context_length_for,
    model_options,
    plan_chat_reply,
    plan_generate_reply,
)
from corral_emulator.state import STATE_KEY, EmulatorState
from corral_emulator.wire import ApiError, decode_json_object, error_response

RAW_MODE_CONFLICT = "raw mode does not support template, system, or context"


async def chat(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "ChatRequest")
        state.requests.record("chat", body)
        chat_request = parse_chat_request(body)
        if not chat_request.model:
            raise ApiError(400, "model is required")
        spec = _find_model(state, chat_request.model)
        shape = ChatChunks(chat_request.model)
        if not chat_request.messages and _unloads(chat_request):
            return run_unload(state, spec, shape)
        if not spec.supports("completion"):
            raise ApiError(400, f'"{chat_request.model}" does not support chat')
        if chat_request.tools and not spec.supports("tools"):
            raise ApiError(400, f"{spec.registry_name} does not support tools")
        _check_think(chat_request, spec)
        options = model_options(spec, chat_request.options)
        if not chat_request.messages:
            return await _load(state, chat_request, spec, options, shape)
        plan = plan_chat_reply(chat_request, spec, options)
        return await _generate(request, state, "chat", chat_request, spec, plan, shape, started_ns)
    except ApiError as exc:
        return error_response(exc.status, exc.message)


async def generate(request: web.Request) -> web.StreamResponse:
    started_ns = time.perf_counter_ns()
    state = request.app[STATE_KEY]
    try:
        body = decode_json_object(await request.read(), "GenerateRequest")
        state.requests.record("generate", body)
        gen_request = parse_generate_request(body)
        # Unlike chat, Ollama's generate reports a missing model as not found.
        spec = _find_model(state, gen_request.model)
        shape = GenerateChunks(gen_request.model)
        if not gen_request.prompt and _unloads(gen_request):
            return run_unload(state, spec, shape)
        if not spec.supports("completion"):
            raise ApiError(400, f'"{gen_request.model}" does not support generate')
        if gen_request.raw and (gen_request.template or gen_request.system or gen_request.context):
            raise ApiError(400, RAW_MODE_CONFLICT)
        _check_think(gen_request, spec)
        options = model_options(spec, gen_request.options)
        if not gen_request.prompt:
            return await _load(state, gen_request, spec, options, shape)
        plan = plan_generate_reply(gen_request, spec, options)
        return await _generate(
            request, state, "generate", gen_request, spec, plan, shape, started_ns
        )
    except ApiError as exc:
        return error_response(exc.status, exc.message)


def _find_model(state: EmulatorState, name: str) -> ModelSpec:
    spec = state.catalogue.find(name)
    if spec is None:
        raise ApiError(404, f"model '{name}' not found")
    return spec


def _unloads(request: GenerationRequest) -> bool:
    return request.keep_alive is not None and request.keep_alive.unloads_now


def _check_think(request: GenerationRequest, spec: ModelSpec) -> None:
    # `think: false` is always fine; asking a non-thinking model to think is not.
    if request.wants_thinking and not spec.supports("thinking"):
        raise ApiError(400, f'"{request.model}" does not support thinking')


async def _load(
    state: EmulatorState,
    request: GenerationRequest,
    spec: ModelSpec,
    options: Options,
    shape: ChunkShape,
) -> web.Response:
    context_length = context_length_for(spec, options)
    return await run_load(state, spec, context_length, shape, request.keep_alive)


async def _generate(
    request: web.Request,
    state: EmulatorState,
    endpoint: str,
    parsed: GenerationRequest,
    spec: ModelSpec,
    plan: ReplyPlan,
    shape: ChunkShape,
    started_ns: int,
) -> web.StreamResponse:
    job = GenerationJob(
        model=parsed.model,
        spec=spec,
        plan=plan,
        keep_alive=parsed.keep_alive,
        stream=parsed.stream,
        shape=shape,
        failure=state.failures.take(endpoint, parsed.model),
        started_ns=started_ns,
        endpoint=endpoint,
    )
    return await run_generation(request, state, job)
