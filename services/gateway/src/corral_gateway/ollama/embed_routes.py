"""`POST /api/embed` and the legacy `POST /api/embeddings`. Computing embeddings makes the
backend load and run a model, so they wait their turn in the serial lane like generations; the
answer is the backend's own JSON, unchanged."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from corral_common.clip import clip
from corral_common.messages import Job, JobKind
from corral_gateway.body import read_request
from corral_gateway.extensions import backend_payload, read_extensions
from corral_gateway.responses import json_response
from corral_gateway.state import GATEWAY
from corral_gateway.surfaces import answer_with
from corral_gateway.ticket import run_job
from corral_gateway.validation import OllamaRequestError


async def embed(request: web.Request) -> web.Response:
    return await _serve(request, "embed")


async def embeddings(request: web.Request) -> web.Response:
    return await _serve(request, "embeddings")


async def _serve(request: web.Request, kind: JobKind) -> web.Response:
    gateway = request.app[GATEWAY]
    body = await read_request(request, kind, gateway.settings.max_body_bytes)
    model = body.get("model") or ""
    if not model:
        raise OllamaRequestError(400, "model is required")
    final, headers = await run_embedding(request, kind, model, body, _texts(kind, body))
    return json_response(final, 200, headers)


async def run_embedding(
    request: web.Request, kind: JobKind, model: str, body: dict[str, Any], texts: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A checked native embedding `body` run through the lane (any surface's): the backend's
    answer and the response's headers. `texts` are the inputs, counted for the lane's
    accounting."""
    gateway = request.app[GATEWAY]
    ext = read_extensions(request, body, gateway.settings.queue_limits())
    headers = {"X-Request-Id": ext.request_id}
    answer_with(request, headers)
    # Ollama words this 404 differently on its embedding path.
    await gateway.models.check(
        model, not_found=f'model "{clip(model)}" not found, try pulling it first'
    )
    done = await run_job(
        gateway,
        Job(
            request_id=ext.request_id,
            gateway_id=gateway.settings.instance_id,
            kind=kind,
            model=model,
            payload=backend_payload(body),
            owner=ext.owner,
            client_key=ext.client_key,
            max_queued=ext.max_queued,
            queue_progress=False,
            enqueued_at=time.time(),
            prompt_chars=sum(len(text) for text in texts),
            priority=ext.priority,
            deadline=ext.deadline(),
        ),
        ext.terms,
    )
    return done.final, headers


def _texts(kind: JobKind, body: dict[str, Any]) -> list[str]:
    if kind == "embeddings":
        return [body.get("prompt") or ""]
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise OllamaRequestError(400, "invalid input type")
