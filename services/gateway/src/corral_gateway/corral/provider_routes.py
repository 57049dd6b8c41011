"""The model-provider endpoints of Corral's own API, `GET /api/providers/ollama/models` and
`POST /api/providers/ollama/pull`: Corral-shaped answers and errors (`{"error": {"type",
"message", "details"}}`) over the same model manager the Ollama endpoints use."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.clip import clip
from corral_common.contracts.model_manager import MODEL_MANAGER, NoParams
from corral_common.errors import STATUS_OF, CorralError, ErrorType
from corral_common.ids import InvalidId
from corral_common.timeouts import within
from corral_gateway.body import model_field, read_body
from corral_gateway.extensions import header_request_id, invalid_id_error
from corral_gateway.operations import model_operation, operation_lines
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError

# A backend 4xx keeps its status; its type is the one Corral's table gives that status.
_CLIENT_ERROR_TYPES = {status: kind for kind, status in reversed(STATUS_OF.items())}


async def models(request: web.Request) -> web.Response:
    # A backend answer without a model list is refused by the model manager (500
    # backend_error "Invalid response format from Ollama: no model list").
    tags = await request.app[GATEWAY].rpc.call(MODEL_MANAGER.tags, NoParams())
    return json_response({"models": tags.models, "total": len(tags.models)}, 200)


async def pull(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    try:
        request_id = header_request_id(request)
    except InvalidId as exc:
        raise invalid_id_error(exc) from exc
    # An OllamaRequestError (body too large, not JSON) is rendered as invalid_request.
    model = _model_of(await read_body(request, gateway.settings.max_body_bytes))
    status_log: list[dict[str, Any]] = []
    timeout_s = gateway.settings.provider_pull_timeout_s
    shown = clip(model)

    async def follow() -> CorralError | None:
        # Closed on the way out, so the ticket stops listening when this request ends.
        pulling = model_operation(MODEL_MANAGER.pull, model)
        following = operation_lines(gateway, pulling, request_id)
        async with aclosing(following) as lines:
            async for item in lines:
                if isinstance(item, CorralError):
                    return item
                status_log.append(item.line)
        return None

    try:
        failure = await within(follow(), timeout_s)
    except TimeoutError:
        raise CorralError(
            ErrorType.BACKEND_TIMEOUT,
            f"Timed out after {timeout_s:g} s waiting for the pull of '{shown}'; it continues "
            "in the background (see GET /admin/pulls)",
            details={"model": shown, "status_log": status_log},
        ) from None
    except CorralError as exc:
        failure = exc
    if failure is not None:
        if failure.error_type in (ErrorType.OLLAMA_CONNECTION_ERROR, ErrorType.BACKEND_TIMEOUT):
            raise failure
        details = {
            "model": shown,
            "backend_status": failure.status,
            "status_log": status_log,
            **failure.details,
        }
        if 400 <= failure.status < 500:
            # The backend refused the request itself (a bad name, an unknown model): the
            # client's error, with the backend's own status and text, not a server failure.
            raise CorralError(
                _CLIENT_ERROR_TYPES.get(failure.status, ErrorType.INVALID_REQUEST),
                failure.message,
                status=failure.status,
                details=details,
            )
        raise CorralError(
            ErrorType.BACKEND_ERROR,
            f"Pull failed: {failure.message}",
            status=500,
            details={
                "model": shown,
                "backend_status": failure.status,
                "status_log": status_log,
                **failure.details,
            },
        )
    return json_response(
        {
            "success": True,
            "message": f"Model '{shown}' pulled successfully",
            "model": model,
            "status_log": status_log,
        },
        200,
    )


def _model_of(raw: bytes) -> str:
    if not raw.strip():
        raise OllamaRequestError(400, "Model name is required")
    try:
        body = jsonutil.loads_bounded(raw)
    except jsonutil.TooDeep as exc:
        raise OllamaRequestError(400, str(exc)) from exc
    except jsonutil.JSONDecodeError as exc:
        raise OllamaRequestError(400, "Request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise OllamaRequestError(400, "Request body must be a JSON object")
    model = model_field(body)
    if not model.strip():
        raise OllamaRequestError(400, "Model name is required")
    return model
