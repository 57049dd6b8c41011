"""Ollama's read-only model endpoints (`/api/tags`, `/api/show`, `/api/ps`), answered by the
model manager over RPC with the backend's own shapes, statuses and error texts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.errors import CorralError
from corral_gateway.state import GATEWAY
from corral_gateway.wire import json_response

MODEL_MANAGER = "model-manager"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", running)
    app.router.add_post("/api/show", show)


async def tags(request: web.Request) -> web.Response:
    return await _answer(request, "tags")


async def running(request: web.Request) -> web.Response:
    return await _answer(request, "ps")


async def show(request: web.Request) -> web.Response:
    raw = await request.read()
    if not raw.strip():
        return json_response({"error": "missing request body"}, 400)
    try:
        body = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError:
        return json_response({"error": "invalid request body: not valid JSON"}, 400)
    if not isinstance(body, dict):
        return json_response({"error": "invalid request body: expected a JSON object"}, 400)
    # ollama-js still sends the older `name`; Ollama takes either.
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        return json_response({"error": "model is required"}, 400)
    return await _answer(request, "show", **{**body, "model": model})


async def _answer(request: web.Request, method: str, **params: Any) -> web.Response:
    try:
        result = await request.app[GATEWAY].rpc.call(MODEL_MANAGER, method, **params)
    except CorralError as exc:
        return json_response(exc.ollama_body(), exc.status, exc.headers)
    return json_response(result, 200)
