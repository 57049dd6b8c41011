"""`POST /api/pull`, `POST /api/push` and `POST /api/create`: operations the model manager
runs, whose status lines come back as `progress` events and are written as Ollama writes them.

Streaming is the default: NDJSON status lines ending in `{"status":"success"}`, or in an
`{"error"}` line once something was written. `stream: false` answers only the last line (or the
error with its status). The operation belongs to the model manager, not to this request: a
client that leaves does not stop a pull, which can be watched at `GET /admin/pulls`.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.contracts.model_manager import MODEL_MANAGER
from corral_common.errors import CorralError
from corral_common.ids import InvalidId
from corral_gateway.body import model_field, read_request
from corral_gateway.encoders import NDJSON
from corral_gateway.extensions import header_request_id
from corral_gateway.operations import Start, create_operation, model_operation, operation_lines
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.surfaces import answer_with
from corral_gateway.validation import OllamaRequestError


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_request(request, "pull", request.app[GATEWAY].settings.max_body_bytes)
    pulling = model_operation(
        MODEL_MANAGER.pull, model_field(body), insecure=bool(body.get("insecure"))
    )
    return await _serve(request, pulling, stream=body.get("stream") is not False)


async def push(request: web.Request) -> web.StreamResponse:
    # The same operation shape as a pull (the model manager's `push`, progress events).
    body = await read_request(request, "push", request.app[GATEWAY].settings.max_body_bytes)
    pushing = model_operation(
        MODEL_MANAGER.push, model_field(body), insecure=bool(body.get("insecure"))
    )
    return await _serve(request, pushing, stream=body.get("stream") is not False)


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_request(request, "create", request.app[GATEWAY].settings.max_body_bytes)
    forwarded = {key: value for key, value in body.items() if key != "stream"}
    stream = body.get("stream") is not False
    return await _serve(request, create_operation(forwarded), stream=stream)


async def _serve(request: web.Request, start: Start, *, stream: bool) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        request_id = header_request_id(request)
    except InvalidId as exc:
        raise OllamaRequestError(400, exc.message) from exc
    headers = {"X-Request-Id": request_id}
    answer_with(request, headers)
    response: web.StreamResponse | None = None
    last: dict[str, Any] | None = None
    # A refusal of the RPC that starts it is raised from here, with its own headers.
    # Closed on the way out, so the ticket stops listening when this request ends.
    async with aclosing(operation_lines(gateway, start, request_id)) as lines:
        async for item in lines:
            if isinstance(item, CorralError):
                if response is None:
                    # The operation's own failure: its status and text (no headers of its own).
                    raise CorralError(
                        item.error_type, item.message, status=item.status, details=item.details
                    )
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
    if response is None:
        return json_response(last or {}, 200, headers)
    await response.write_eof()
    return response
