"""The `/v1` handlers. Generations take the native path unchanged (sessions, the num_ctx guard,
the serial lane, fairness, priorities, queue timeouts, cancellation), entered with a native body
translated from the OpenAI one, and shown as OpenAI objects over SSE; embeddings wait their turn
in the lane as `/api/embed` does; models are the model manager's `/api/tags` and `/api/show`.
Handlers raise typed errors; the surface (`OPENAI`) renders them in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common.contracts.model_manager import MODEL_MANAGER, NoParams, ShowParams
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import JobKind
from corral_gateway.body import read_body
from corral_gateway.encoders import StreamEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.ollama.chat_routes import Present, serve_generation
from corral_gateway.ollama.embed_routes import run_embedding
from corral_gateway.openai.chunk_shapes import ChatChunks, CompletionChunks, OpenAISseEncoder
from corral_gateway.openai.requests import (
    name_tool_results,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from corral_gateway.openai.responses import embedding_list, model_list, model_retrieved
from corral_gateway.relay import ChunkShape
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import OllamaRequestError


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await serve_generation(request, "chat", _decode, name_tool_results)


async def completions(request: web.Request) -> web.StreamResponse:
    return await serve_generation(request, "generate", _decode)


async def _decode(
    request: web.Request, gateway: Gateway, kind: JobKind
) -> tuple[dict[str, Any], Present]:
    """A `/v1` chat or completion request as the native body of the same kind, shown as
    OpenAI's chunks."""
    raw = await read_body(request, gateway.settings.max_body_bytes)
    parsed = parse_chat(raw) if kind == "chat" else parse_completion(raw)
    body = parsed.to_ollama(
        request.headers.get("X-Session-Id"),
        user_is_session=gateway.settings.openai_user_sessions,
    )
    include_usage = parsed.include_usage
    shape_type = ChatChunks if kind == "chat" else CompletionChunks

    def present(model: str, ext: Extensions) -> tuple[ChunkShape, StreamEncoder]:
        shape = shape_type.for_request(ext.request_id, model, include_usage=include_usage)
        return shape, OpenAISseEncoder()

    return body, present


async def embeddings(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    embedding = parse_embedding(await read_body(request, gateway.settings.max_body_bytes))
    body = embedding.to_ollama()
    model = body["model"]
    if not model:
        raise OllamaRequestError(400, "model is required")
    texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
    final, headers = await run_embedding(request, "embed", model, body, texts)
    answer = embedding_list(model, final, base64_encoded=embedding.base64)
    return json_response(answer, 200, headers)


async def list_models(request: web.Request) -> web.Response:
    tags = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.tags, NoParams())
    return json_response(model_list(tags.wire()), 200)


async def retrieve_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    try:
        show = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.show, ShowParams(model=model))
    except CorralError as exc:
        if exc.status == 404:
            # The backend's own refusal, typed so the answer carries `model_not_found`.
            raise CorralError(ErrorType.MODEL_NOT_FOUND, exc.message) from exc
        raise
    return json_response(model_retrieved(model, show.wire()), 200)
