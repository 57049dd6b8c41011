"""The seed integration's model-provider endpoints, `GET /api/providers/ollama/models` and
`POST /api/providers/ollama/pull`: Corral-shaped answers and errors (`{"error": {"type",
"message", "details"}}`) over the same model manager the Ollama endpoints use."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.timeouts import within
from corral_gateway.body import model_field, read_body
from corral_gateway.progress import MODEL_MANAGER, operation_lines
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError
from corral_gateway.wire import json_response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/providers/ollama/models", models)
    app.router.add_post("/api/providers/ollama/pull", pull)


async def models(request: web.Request) -> web.Response:
    try:
        tags = await request.app[GATEWAY].rpc.call(MODEL_MANAGER, "tags")
    except CorralError as exc:
        return json_response(exc.corral_body(), exc.status, exc.headers)
    listed = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(listed, list):
        error = CorralError(
            ErrorType.BACKEND_ERROR,
            "Invalid response format from Ollama: no model list",
            status=500,
        )
        return json_response(error.corral_body(), error.status)
    return json_response({"models": listed, "total": len(listed)}, 200)


async def pull(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        model = _model_of(await read_body(request, gateway.settings.max_body_bytes))
    except OllamaRequestError as exc:
        error = CorralError(ErrorType.INVALID_REQUEST, exc.message, status=exc.status)
        return json_response(error.corral_body(), error.status)
    status_log: list[dict[str, Any]] = []
    timeout_s = gateway.settings.provider_pull_timeout_s
    request_id = request.headers.get("X-Request-Id") or new_id()

    async def follow() -> CorralError | None:
        lines = operation_lines(gateway, "pull", {"model": model}, request_id)
        async for item in lines:
            if isinstance(item, CorralError):
                return item
            status_log.append(item.line)
        return None

    try:
        failure = await within(follow(), timeout_s)
    except TimeoutError:
        error = CorralError(
            ErrorType.BACKEND_TIMEOUT,
            f"Timed out after {timeout_s:g} s waiting for the pull of '{model}'; it continues "
            "in the background (see GET /admin/pulls)",
            details={"model": model, "status_log": status_log},
        )
        return json_response(error.corral_body(), error.status)
    except CorralError as exc:
        failure = exc
    if failure is not None:
        if failure.error_type in (ErrorType.OLLAMA_CONNECTION_ERROR, ErrorType.BACKEND_TIMEOUT):
            return json_response(failure.corral_body(), failure.status, failure.headers)
        error = CorralError(
            ErrorType.BACKEND_ERROR,
            f"Pull failed: {failure.message}",
            status=500,
            details={
                "model": model,
                "backend_status": failure.status,
                "status_log": status_log,
                **failure.details,
            },
        )
        return json_response(error.corral_body(), error.status)
    return json_response(
        {
            "success": True,
            "message": f"Model '{model}' pulled successfully",
            "model": model,
            "status_log": status_log,
        },
        200,
    )


def _model_of(raw: bytes) -> str:
    if not raw.strip():
        raise OllamaRequestError(400, "Model name is required")
    try:
        body = jsonutil.loads(raw)
    except jsonutil.JSONDecodeError as exc:
        raise OllamaRequestError(400, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise OllamaRequestError(400, "Request body must be a JSON object")
    model = model_field(body)
    if not model.strip():
        raise OllamaRequestError(400, "Model name is required")
    return model
