"""POST /api/chat and POST /api/generate: validate, enqueue, relay."""

from __future__ import annotations

import math
import time
from typing import Any

import structlog
from aiohttp import web

from corral_common.errors import CorralError
from corral_common.messages import Job, JobKind
from corral_gateway import metrics
from corral_gateway.extensions import Extensions, backend_payload, read_extensions
from corral_gateway.relay import Relay, RelayTimings, _json
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import OllamaRequestError, decode_body

log = structlog.get_logger(__name__)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generation(request, "generate")


async def _generation(request: web.Request, kind: JobKind) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    started = time.monotonic()
    outcome = "error"
    metrics.IN_FLIGHT.inc()
    try:
        response, outcome = await _serve(request, gateway, kind)
        return response
    finally:
        metrics.IN_FLIGHT.dec()
        metrics.REQUESTS.labels(kind, outcome).inc()
        metrics.REQUEST_SECONDS.labels(kind).observe(time.monotonic() - started)


async def _serve(
    request: web.Request, gateway: Gateway, kind: JobKind
) -> tuple[web.StreamResponse, str]:
    try:
        body = decode_body(await _read(request, gateway.settings.max_body_bytes), kind)
        model = body.get("model") or ""
        if not model:
            if kind == "chat":
                raise OllamaRequestError(400, "model is required")
            raise OllamaRequestError(404, "model '' not found")
        ext = read_extensions(request, body)
    except OllamaRequestError as exc:
        return _json({"error": exc.message}, exc.status, {}), "invalid"

    with structlog.contextvars.bound_contextvars(
        request_id=ext.request_id, session_id=ext.session_id
    ):
        return await _enqueue_and_relay(request, gateway, kind, model, body, ext)


async def _enqueue_and_relay(
    request: web.Request,
    gateway: Gateway,
    kind: JobKind,
    model: str,
    body: dict[str, Any],
    ext: Extensions,
) -> tuple[web.StreamResponse, str]:
    headers = {"X-Request-Id": ext.request_id}
    try:
        events = gateway.hub.register(ext.request_id)
    except KeyError:
        message = f"request_id {ext.request_id!r} is already in flight"
        return _json({"error": message}, 400, headers), "invalid"
    relay = Relay(
        request,
        kind=kind,
        model=model,
        stream=body.get("stream") is not False,
        ext=ext,
        events=events,
        messages_used=_messages_used(kind, body),
        timings=RelayTimings(
            heartbeat_s=gateway.settings.heartbeat_s,
            straggler_timeout_s=gateway.settings.straggler_timeout_s,
        ),
    )
    submitted = False
    try:
        await gateway.submitter.submit(_job(gateway, kind, model, body, ext), _retry_after(gateway))
        submitted = True
        response = await relay.run()
        return response, "done" if relay.finished else "error"
    except CorralError as exc:
        log.info("request refused", error_type=str(exc.error_type))
        return _json(exc.ollama_body(), exc.status, {**headers, **exc.headers}), str(exc.error_type)
    except ConnectionResetError:
        log.info("client went away mid-stream")
        assert relay.response is not None
        return relay.response, "client_gone"
    finally:
        gateway.hub.unregister(ext.request_id)
        if submitted and not relay.finished:
            # The client left (or the handler was cancelled): free its place in the lane.
            gateway.spawn(gateway.submitter.cancel(ext.request_id, "client disconnected"))


def _job(gateway: Gateway, kind: JobKind, model: str, body: dict[str, Any], ext: Extensions) -> Job:
    options = body.get("options")
    num_predict = options.get("num_predict") if isinstance(options, dict) else None
    return Job(
        request_id=ext.request_id,
        gateway_id=gateway.settings.instance_id,
        kind=kind,
        model=model,
        payload=backend_payload(body),
        session_id=ext.session_id,
        client_key=ext.client_key,
        enqueued_at=time.time(),
        prompt_chars=_prompt_chars(kind, body),
        num_predict=num_predict if isinstance(num_predict, int) else None,
    )


async def _read(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise OllamaRequestError(413, f"request body too large: the limit is {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise OllamaRequestError(
            413, f"request body too large: the limit is {limit} bytes"
        ) from exc


def _messages_used(kind: JobKind, body: dict[str, Any]) -> int:
    if kind == "chat":
        return len(body.get("messages") or [])
    return 1 + (1 if body.get("system") else 0)


def _prompt_chars(kind: JobKind, body: dict[str, Any]) -> int:
    if kind == "chat":
        return sum(len(m.get("content") or "") for m in body.get("messages") or [])
    return len(body.get("prompt") or "") + len(body.get("system") or "")


def _retry_after(gateway: Gateway) -> int:
    statuses = gateway.hub.status.fresh()
    depth = sum(s.queue.waiting + s.queue.running for s in statuses)
    rate = sum(s.queue.processing_rate for s in statuses)
    return math.ceil(depth / rate) if rate > 0 else 10
