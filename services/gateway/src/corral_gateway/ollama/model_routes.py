"""Ollama's model endpoints that answer at once: `/api/tags`, `/api/show`, `/api/ps`,
`/api/delete` and `/api/copy`. The model manager answers them over RPC with the backend's own
shapes, statuses and error texts, which pass through unchanged."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    CopyParams,
    ModelParams,
    NoParams,
    ShowParams,
)
from corral_gateway.body import model_field, read_request
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError


async def tags(request: web.Request) -> web.Response:
    answer = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.tags, NoParams())
    return json_response(answer.wire(), 200)


async def running(request: web.Request) -> web.Response:
    answer = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.ps, NoParams())
    return json_response(answer.wire(), 200)


async def show(request: web.Request) -> web.Response:
    body = await _decode(request, "show")
    # ollama-js still sends the older `name`; Ollama takes either.
    model = model_field(body)
    if not model:
        raise OllamaRequestError(400, "model is required")
    # The client's whole body goes on: the backend reads what else it asks (`verbose`).
    answer = await request.app[GATEWAY].rpc.call(
        MODEL_MANAGER.show, ShowParams(**{**body, "model": model})
    )
    return json_response(answer.wire(), 200)


async def delete(request: web.Request) -> web.Response:
    body = await _decode(request, "delete")
    await request.app[GATEWAY].rpc.call(MODEL_MANAGER.delete, ModelParams(model=model_field(body)))
    # Ollama answers a success with 200 and no body at all.
    return web.Response(status=200)


async def copy(request: web.Request) -> web.Response:
    body = await _decode(request, "copy")
    params = CopyParams(source=body.get("source") or "", destination=body.get("destination") or "")
    await request.app[GATEWAY].rpc.call(MODEL_MANAGER.copy, params)
    return web.Response(status=200)


async def _decode(request: web.Request, kind: str) -> dict[str, Any]:
    return await read_request(request, kind, request.app[GATEWAY].settings.max_body_bytes)
