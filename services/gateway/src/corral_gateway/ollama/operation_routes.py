"""`POST /api/pull` and `POST /api/create`: operations the model manager runs, whose status
lines come back as `progress` events and are written as Ollama writes them.

Streaming is the default: NDJSON status lines ending in `{"status":"success"}`, or in an
`{"error"}` line once something was written. `stream: false` answers only the last line (or the
error with its status). The operation belongs to the model manager, not to this request: a
client that leaves does not stop a pull, which can be watched at `GET /admin/pulls`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId
from corral_common.messages import Failed, Progress
from corral_gateway.body import model_field, read_request
from corral_gateway.extensions import header_request_id
from corral_gateway.hub import BrokerLost, Delivery
from corral_gateway.jobs import BROKER_LOST_MESSAGE, failure_error, listening
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import OllamaRequestError
from corral_gateway.wire import NDJSON, json_response

MODEL_MANAGER = "model-manager"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/create", create)


@dataclass(frozen=True)
class Outcome:
    """How an operation ended: its last line on success, or the error."""

    last: dict[str, Any] | None
    error: CorralError | None


async def pull(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_request(request, "pull", request.app[GATEWAY].settings.max_body_bytes)
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status)
    params = {"model": model_field(body), "insecure": bool(body.get("insecure"))}
    return await _serve(request, "pull", params, stream=body.get("stream") is not False)


async def create(request: web.Request) -> web.StreamResponse:
    try:
        body = await read_request(request, "create", request.app[GATEWAY].settings.max_body_bytes)
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status)
    forwarded = {key: value for key, value in body.items() if key != "stream"}
    stream = body.get("stream") is not False
    return await _serve(request, "create", {"body": forwarded}, stream=stream)


async def operation_lines(
    gateway: Gateway, method: str, params: dict[str, Any], request_id: str
) -> AsyncIterator[Progress | CorralError]:
    """Start (or join) the operation and yield its status lines, then possibly one error."""
    async with listening(gateway, request_id) as events:
        await gateway.rpc.call(
            MODEL_MANAGER,
            method,
            request_id=request_id,
            gateway_id=gateway.settings.instance_id,
            **params,
        )
        while True:
            event: Delivery = await events.get()
            match event:
                case Progress():
                    yield event
                    if event.final:
                        return
                case Failed():
                    yield failure_error(event)
                    return
                case BrokerLost():
                    yield CorralError(
                        ErrorType.BROKER_UNAVAILABLE,
                        BROKER_LOST_MESSAGE,
                        headers={"Retry-After": "5"},
                    )
                    return


async def _serve(
    request: web.Request, method: str, params: dict[str, Any], *, stream: bool
) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        request_id = header_request_id(request)
    except InvalidId as exc:
        return json_response({"error": exc.message}, 400)
    headers = {"X-Request-Id": request_id}
    response: web.StreamResponse | None = None
    last: dict[str, Any] | None = None
    try:
        async for item in operation_lines(gateway, method, params, request_id):
            if isinstance(item, CorralError):
                if response is None:
                    return json_response(item.ollama_body(), item.status, headers)
                await response.write(jsonutil.ndjson_line(item.ollama_body()))
                break
            last = item.line
            if not stream:
                continue
            if response is None:
                response = web.StreamResponse(status=200, headers=headers)
                response.content_type = NDJSON
                await response.prepare(request)
            await response.write(jsonutil.ndjson_line(item.line))
    except CorralError as exc:  # the RPC that starts it was refused
        return json_response(exc.ollama_body(), exc.status, {**headers, **exc.headers})
    if response is None:
        return json_response(last or {}, 200, headers)
    await response.write_eof()
    return response
