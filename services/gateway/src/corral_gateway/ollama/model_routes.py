"""Ollama's model endpoints that answer at once: `/api/tags`, `/api/show`, `/api/ps`,
`/api/delete` and `/api/copy`. The model manager answers them over RPC with the backend's own
shapes, statuses and error texts, which pass through unchanged."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common.errors import CorralError
from corral_gateway.body import model_field, read_request
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError
from corral_gateway.wire import json_response

MODEL_MANAGER = "model-manager"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", running)
    app.router.add_post("/api/show", show)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/copy", copy)


async def tags(request: web.Request) -> web.Response:
    return await _answer(request, "tags")


async def running(request: web.Request) -> web.Response:
    return await _answer(request, "ps")


async def show(request: web.Request) -> web.Response:
    try:
        body = await _decode(request, "show")
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status)
    # ollama-js still sends the older `name`; Ollama takes either.
    model = model_field(body)
    if not model:
        return json_response({"error": "model is required"}, 400)
    return await _answer(request, "show", **{**body, "model": model})


async def delete(request: web.Request) -> web.Response:
    try:
        body = await _decode(request, "delete")
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status)
    # Ollama answers a success with 200 and no body at all.
    return await _answer(request, "delete", empty=True, model=model_field(body))


async def copy(request: web.Request) -> web.Response:
    try:
        body = await _decode(request, "copy")
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status)
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
    try:
        result = await request.app[GATEWAY].rpc.call(MODEL_MANAGER, method, **params)
    except CorralError as exc:
        return json_response(exc.ollama_body(), exc.status, exc.headers)
    if empty:
        return web.Response(status=200)
    return json_response(result, 200)
