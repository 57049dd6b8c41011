"""Ollama's model endpoints that answer at once: `/api/tags`, `/api/show`, `/api/ps`,
`/api/delete` and `/api/copy`. The model manager answers them over RPC with the backend's own
shapes, statuses and error texts, which pass through unchanged."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_gateway.body import model_field, read_request
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError

MODEL_MANAGER = "model-manager"


async def tags(request: web.Request) -> web.Response:
    return await _answer(request, "tags")


async def running(request: web.Request) -> web.Response:
    return await _answer(request, "ps")


async def show(request: web.Request) -> web.Response:
    body = await _decode(request, "show")
    # ollama-js still sends the older `name`; Ollama takes either.
    model = model_field(body)
    if not model:
        raise OllamaRequestError(400, "model is required")
    return await _answer(request, "show", **{**body, "model": model})


async def delete(request: web.Request) -> web.Response:
    body = await _decode(request, "delete")
    # Ollama answers a success with 200 and no body at all.
    return await _answer(request, "delete", empty=True, model=model_field(body))


async def copy(request: web.Request) -> web.Response:
    body = await _decode(request, "copy")
    return await _answer(
        request,
        "copy",
        empty=True,
        source=body.get("source") or "",
        destination=body.get("destination") or "",
    )


async def _decode(request: web.Request, kind: str) -> dict[str, Any]:
    return await read_request(request, kind, request.app[GATEWAY].settings.max_body_bytes)


async def _answer(
    request: web.Request, method: str, *, empty: bool = False, **params: Any
) -> web.Response:
    result = await request.app[GATEWAY].rpc.call(MODEL_MANAGER, method, **params)
    if empty:
        return web.Response(status=200)
    return json_response(result, 200)
