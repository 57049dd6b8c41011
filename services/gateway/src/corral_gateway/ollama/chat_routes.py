"""POST /api/chat and POST /api/generate: validate, enqueue, relay."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from corral_common.errors import CorralError
from corral_common.messages import Job, JobKind
from corral_gateway import metrics
from corral_gateway.body import read_request
from corral_gateway.extensions import Extensions, backend_payload, read_extensions
from corral_gateway.hub import Delivery
from corral_gateway.jobs import listening, retry_after_s
from corral_gateway.relay import Relay, RelayTimings
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import OllamaRequestError
from corral_gateway.wire import json_response

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
        body = await read_request(request, kind, gateway.settings.max_body_bytes)
        model = body.get("model") or ""
        if not model:
            if kind == "chat":
                raise OllamaRequestError(400, "model is required")
            raise OllamaRequestError(404, "model '' not found")
        ext = read_extensions(request, body, gateway.settings.queue_limits())
    except OllamaRequestError as exc:
        return json_response({"error": exc.message}, exc.status, {}), "invalid"

    with structlog.contextvars.bound_contextvars(
        request_id=ext.request_id, session_id=ext.session_id
    ):
        try:
            await gateway.models.check(model)
            conversation = await _conversation(gateway, kind, model, body, ext)
        except CorralError as exc:
            headers = {"X-Request-Id": ext.request_id, **exc.headers}
            return json_response(exc.ollama_body(), exc.status, headers), str(exc.error_type)
        return await _enqueue_and_relay(request, gateway, kind, model, conversation, ext)


@dataclass(frozen=True)
class Conversation:
    """What goes to the backend, and what the session store will keep of this request."""

    payload: dict[str, Any]
    stream: bool
    turn: list[dict[str, Any]] | None = None
    context_info: dict[str, Any] | None = None
    messages_used: int = 0


async def _conversation(
    gateway: Gateway, kind: JobKind, model: str, body: dict[str, Any], ext: Extensions
) -> Conversation:
    """Without a session, the request goes as the client sent it, exactly as to Ollama. With one,
    the session store assembles the history for this model around the new messages."""
    payload = backend_payload(body)
    stream = body.get("stream") is not False  # Ollama streams unless told not to
    new = _new_messages(kind, body)
    if ext.session_id is None or not new:
        # Load and unload requests (nothing to say) are not turns of a conversation.
        return Conversation(payload, stream, messages_used=_messages_used(kind, body))
    assembled = await gateway.rpc.call(
        "session-store",
        "assemble",
        session_id=ext.session_id,
        model=model,
        kind=kind,
        messages=new if kind == "chat" else [],
        options=body.get("options") if isinstance(body.get("options"), dict) else None,
        request_id=ext.request_id,
    )
    context_info = dict(assembled.get("context_info") or {})
    if kind == "chat":
        payload["messages"] = assembled["messages"]
    return Conversation(
        payload,
        stream,
        turn=new,
        context_info=context_info,
        messages_used=int(context_info.get("messages_used") or len(new)),
    )


def _new_messages(kind: JobKind, body: dict[str, Any]) -> list[dict[str, Any]]:
    if kind == "chat":
        return [m for m in body.get("messages") or [] if isinstance(m, dict)]
    turn = []
    if body.get("system"):
        turn.append({"role": "system", "content": body["system"]})
    if body.get("prompt"):
        turn.append({"role": "user", "content": body["prompt"]})
    return turn if body.get("prompt") else []


async def _enqueue_and_relay(
    request: web.Request,
    gateway: Gateway,
    kind: JobKind,
    model: str,
    conversation: Conversation,
    ext: Extensions,
) -> tuple[web.StreamResponse, str]:
    try:
        async with listening(gateway, ext.request_id) as events:
            return await _relay(request, gateway, kind, model, conversation, ext, events)
    except CorralError as exc:  # the request id is already in flight
        headers = {"X-Request-Id": ext.request_id}
        return json_response(exc.ollama_body(), exc.status, headers), "invalid"


async def _relay(
    request: web.Request,
    gateway: Gateway,
    kind: JobKind,
    model: str,
    conversation: Conversation,
    ext: Extensions,
    events: asyncio.Queue[Delivery],
) -> tuple[web.StreamResponse, str]:
    headers = {"X-Request-Id": ext.request_id}
    relay = Relay(
        request,
        kind=kind,
        model=model,
        stream=conversation.stream,
        ext=ext,
        events=events,
        messages_used=conversation.messages_used,
        timings=RelayTimings(
            heartbeat_s=gateway.settings.heartbeat_s,
            straggler_timeout_s=gateway.settings.straggler_timeout_s,
            stored_timeout_s=gateway.settings.stored_timeout_s,
        ),
        context_info=conversation.context_info,
    )
    # From the moment the publish starts the job may be in the lane: the scheduler can start
    # it before our publisher confirm arrives, so a client leaving during that wait must
    # still cancel it. Only a refusal from the broker says it never got there.
    in_lane = False
    gateway.relays[ext.request_id] = relay
    try:
        job = _job(gateway, kind, model, conversation, ext)
        in_lane = True
        try:
            await gateway.submitter.submit(job, retry_after_s(gateway))
        except CorralError:
            in_lane = False
            raise
        response = await relay.run()
        return response, "done" if relay.finished else "error"
    except CorralError as exc:
        log.info("request refused", error_type=str(exc.error_type))
        return json_response(exc.ollama_body(), exc.status, {**headers, **exc.headers}), str(
            exc.error_type
        )
    except ConnectionResetError:
        log.info("client went away mid-stream")
        assert relay.response is not None
        return relay.response, "client_gone"
    finally:
        gateway.relays.pop(ext.request_id, None)
        if in_lane and (not relay.finished or relay.timed_out):
            # The client left (or the handler was cancelled): free its place in the lane.
            log.info("cancelling the job of a request that ended early")
            gateway.spawn(gateway.submitter.cancel(ext.request_id, "client disconnected"))


def _job(
    gateway: Gateway, kind: JobKind, model: str, conversation: Conversation, ext: Extensions
) -> Job:
    body = conversation.payload
    options = body.get("options")
    num_predict = options.get("num_predict") if isinstance(options, dict) else None
    return Job(
        request_id=ext.request_id,
        gateway_id=gateway.settings.instance_id,
        kind=kind,
        model=model,
        payload=body,
        session_id=ext.session_id,
        turn=conversation.turn,
        client_key=ext.client_key,
        queue_progress=ext.queue_progress,
        enqueued_at=time.time(),
        priority=ext.priority,
        deadline=ext.deadline(),
        prompt_chars=_prompt_chars(kind, body),
        num_predict=num_predict if isinstance(num_predict, int) else None,
    )


def _messages_used(kind: JobKind, body: dict[str, Any]) -> int:
    if kind == "chat":
        return len(body.get("messages") or [])
    return 1 + (1 if body.get("system") else 0)


def _prompt_chars(kind: JobKind, body: dict[str, Any]) -> int:
    if kind == "chat":
        return sum(len(m.get("content") or "") for m in body.get("messages") or [])
    return len(body.get("prompt") or "") + len(body.get("system") or "")
