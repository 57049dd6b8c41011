"""POST /api/chat and POST /api/generate: validate, enqueue, relay (NDJSON, Ollama's chunks)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from corral_common.contracts.session_store import SESSION_STORE, AssembleParams
from corral_common.errors import CorralError
from corral_common.messages import Done, Job, JobKind
from corral_gateway import metrics
from corral_gateway.body import read_request
from corral_gateway.context_check import (
    asked_num_ctx,
    check_stateless,
    context_windows,
    prompt_tokens,
    window_of,
)
from corral_gateway.encoders import NdjsonEncoder, StreamEncoder
from corral_gateway.extensions import Extensions, backend_payload, read_extensions
from corral_gateway.identity.principal import caller_of
from corral_gateway.identity.quotas import quota_of
from corral_gateway.ollama.chunks import OllamaChunks, corral_fields
from corral_gateway.relay import ChunkShape, Extras, JobFailed, Relay, RelayTimings
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.surfaces import answer_with
from corral_gateway.ticket import JobTicket
from corral_gateway.validation import OllamaRequestError

log = structlog.get_logger(__name__)


# How a surface shows a generation's answer: its chunk shape and encoder, given the model and
# the request's extensions.
Present = Callable[[str, Extensions], tuple[ChunkShape, StreamEncoder]]
# A surface's decoding of a generation request: the native body to run, and how to show it.
Decode = Callable[[web.Request, Gateway, JobKind], Awaitable[tuple[dict[str, Any], Present]]]
# A surface's own finishing of a session chat's assembled messages (history and new ones), in
# place: what it derives from the whole conversation, which its decoding saw only part of.
Finish = Callable[[list[dict[str, Any]]], None]


async def chat(request: web.Request) -> web.StreamResponse:
    return await serve_generation(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await serve_generation(request, "generate")


async def decode_native(
    request: web.Request, gateway: Gateway, kind: JobKind
) -> tuple[dict[str, Any], Present]:
    """Ollama's own request, shown as Ollama's NDJSON chunks. A load or unload (nothing to say)
    is answered with one JSON object whatever `stream` says, as Ollama answers it (`c.JSON` in
    its ChatHandler and GenerateHandler, `done_reason` "load" or "unload")."""
    body = await read_request(request, kind, gateway.settings.max_body_bytes)
    if loads_model(kind, body):
        body = {**body, "stream": False}

    def present(model: str, ext: Extensions) -> tuple[ChunkShape, StreamEncoder]:
        return OllamaChunks(kind, model), NdjsonEncoder()

    return body, present


def loads_model(kind: JobKind, body: dict[str, Any]) -> bool:
    """Ollama's load/unload idiom: a chat without messages, a generate without a prompt."""
    return not body.get("messages") if kind == "chat" else not body.get("prompt")


class Outcome:
    """The request's outcome label for the metrics, as far as it got."""

    def __init__(self) -> None:
        self.label = "error"


async def serve_generation(
    request: web.Request,
    kind: JobKind,
    decode: Decode = decode_native,
    finish: Finish | None = None,
) -> web.StreamResponse:
    """A chat or generate request of any surface: decoded by the surface into a native body,
    then the same path for all (sessions, the lane, the relay), shown as the surface shows it.
    `finish`, if given, completes a session chat's assembled messages for the surface."""
    gateway = request.app[GATEWAY]
    started = time.monotonic()
    outcome = Outcome()
    metrics.IN_FLIGHT.inc()
    try:
        return await _serve(request, gateway, kind, outcome, decode, finish)
    finally:
        metrics.IN_FLIGHT.dec()
        metrics.REQUESTS.labels(kind, outcome.label).inc()
        metrics.REQUEST_SECONDS.labels(kind).observe(time.monotonic() - started)


async def _serve(
    request: web.Request,
    gateway: Gateway,
    kind: JobKind,
    outcome: Outcome,
    decode: Decode,
    finish: Finish | None,
) -> web.StreamResponse:
    try:
        body, present = await decode(request, gateway, kind)
        model = body.get("model") or ""
        if not model:
            if kind == "chat":
                raise OllamaRequestError(400, "model is required")
            raise OllamaRequestError(404, "model '' not found")
        ext = read_extensions(request, body, gateway.settings.queue_limits())
    except Exception:
        # Whatever refuses the request here (each surface decodes with its own error type)
        # refuses it as invalid; the surface renders the error.
        outcome.label = "invalid"
        raise
    # From here on, every answer names the request (and its session, which may be new).
    answer_with(request, {"X-Request-Id": ext.request_id})
    if ext.session_id is not None:
        answer_with(request, {"X-Session-Id": ext.session_id})
    with structlog.contextvars.bound_contextvars(
        request_id=ext.request_id, session_id=ext.session_id
    ):
        try:
            await gateway.models.check(model)
            conversation = await _conversation(gateway, kind, model, body, ext, finish)
        except CorralError as exc:
            outcome.label = str(exc.error_type)
            raise
        return await _enqueue_and_relay(
            request, gateway, kind, model, conversation, ext, outcome, present
        )


@dataclass(frozen=True)
class Conversation:
    """What goes to the backend, and what the session store will keep of this request."""

    kind: JobKind
    payload: dict[str, Any]
    stream: bool
    turn: list[dict[str, Any]] | None = None
    context_info: dict[str, Any] | None = None
    messages_used: int = 0

    def estimated_tokens(self) -> int:
        """The prompt's tokens as estimated here, for a backend that does not count them."""
        return prompt_tokens(self.kind, self.payload)


async def _conversation(
    gateway: Gateway,
    kind: JobKind,
    model: str,
    body: dict[str, Any],
    ext: Extensions,
    finish: Finish | None = None,
) -> Conversation:
    """Without a session, the request goes as the client sent it, exactly as to Ollama. With one,
    the session store assembles the history for this model around the new messages: the
    caller's own session only (another owner's is 404 `session_not_found`, as a missing one)."""
    payload = backend_payload(body)
    stream = body.get("stream") is not False  # Ollama streams unless told not to
    new = _new_messages(kind, body)
    if ext.session_id is None or not new:
        # Load and unload requests (nothing to say) are not turns of a conversation.
        context_info = await _stateless_context(gateway, kind, model, payload) if new else None
        return Conversation(
            kind,
            payload,
            stream,
            context_info=context_info,
            messages_used=_messages_used(kind, body),
        )
    # Messages the store would refuse are refused here, in the store's words.
    params = AssembleParams(
        session_id=ext.session_id,
        model=model,
        kind=kind,
        messages=new if kind == "chat" else [],
        options=body.get("options") if isinstance(body.get("options"), dict) else None,
        owner=ext.owner,
        request_id=ext.request_id,
        max_history_length=ext.session.max_history_length,
    )
    # This session's turns answered here and not yet stored first: their answers went out
    # without waiting for the store, so this is where a client that asks again at once is
    # made to find them (turns_in_flight.py).
    await gateway.turns.settled(ext.session_id)
    assembled = await gateway.rpc.call(SESSION_STORE.assemble, params)
    if kind == "chat":
        payload["messages"] = assembled.messages
        if finish is not None:
            finish(payload["messages"])
    return Conversation(
        kind,
        payload,
        stream,
        turn=new,
        context_info=assembled.context_info.wire(),
        messages_used=assembled.context_info.messages_used or len(new),
    )


async def _stateless_context(
    gateway: Gateway, kind: JobKind, model: str, payload: dict[str, Any]
) -> dict[str, Any] | None:
    """What the backend will make of a prompt without a session (context_check.py): None
    when it fits its window, the truncation it will do otherwise; a 413 when the message to
    answer cannot fit."""
    settings = gateway.settings
    if not settings.stateless_context_check:
        return None
    lengths = getattr(gateway, "context_lengths", None)
    if lengths is None:
        lengths = gateway.context_lengths = context_windows(gateway.rpc)
    options = payload.get("options")
    options = options if isinstance(options, dict) else None
    length = None
    if asked_num_ctx(options) is None:
        length = await lengths.context_length(model)
    return check_stateless(kind, payload, window_of(options, length, settings.default_num_ctx))


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
    outcome: Outcome,
    present: Present,
) -> web.StreamResponse:
    try:
        quota = quota_of(gateway, caller_of(request))
        ticket = JobTicket(gateway, ext.request_id, quota).open()
    except CorralError as exc:  # the request id is already in flight: a 409
        outcome.label = str(exc.error_type)
        raise
    shape, encoder = present(model, ext)
    async with ticket:  # leaving unregisters it and cancels an abandoned job
        relay = Relay(
            request,
            ticket=ticket,
            kind=kind,
            stream=conversation.stream,
            ext=ext,
            shape=shape,
            encoder=encoder,
            extras=_extras(ext, conversation),
            timings=RelayTimings(
                heartbeat_s=gateway.settings.heartbeat_s,
                straggler_timeout_s=gateway.settings.straggler_timeout_s,
                stored_timeout_s=gateway.settings.stored_timeout_s,
            ),
        )
        ticket.show(relay)
        try:
            try:
                await ticket.submit(_job(gateway, kind, model, conversation, ext))
            except CorralError as exc:
                log.info("request refused", error_type=str(exc.error_type))
                outcome.label = str(exc.error_type)
                raise
            response = await relay.run()
            outcome.label = "done" if relay.finished else "error"
            return response
        except JobFailed:
            # Answered with its error (rendered by the surface): the relay ran to its end.
            outcome.label = "done"
            raise
        except ConnectionResetError:
            log.info("client went away mid-stream")
            outcome.label = "client_gone"
            assert relay.response is not None
            return relay.response


def _extras(ext: Extensions, conversation: Conversation) -> Extras:
    """Corral's fields on the final answer (`ollama.chunks.corral_fields`)."""

    def extras(done: Done, first_position: int) -> dict[str, Any]:
        return corral_fields(
            request_id=ext.request_id,
            session_id=ext.session_id,
            waited_ms=done.waited_ms,
            first_position=first_position,
            messages_used=conversation.messages_used,
            final=done.final,
            context_info=conversation.context_info,
            estimate=conversation.estimated_tokens if conversation.messages_used else None,
        )

    return extras


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
        owner=ext.owner,
        metadata=ext.session.metadata if ext.session_id is not None else None,
        client_key=ext.client_key,
        max_queued=ext.max_queued,
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
    if not body.get("prompt"):
        return 0  # a load or unload sends nothing to the model
    return 1 + (1 if body.get("system") else 0)


def _prompt_chars(kind: JobKind, body: dict[str, Any]) -> int:
    if kind == "chat":
        return sum(len(m.get("content") or "") for m in body.get("messages") or [])
    return len(body.get("prompt") or "") + len(body.get("system") or "")
