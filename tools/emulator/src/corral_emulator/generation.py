"""Running one chat/generate request: load, prompt evaluation, timed tokens, failures, and the
concurrency record. Shared by both endpoints; they differ only in their ChunkShape."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from corral_emulator.activity import OperationKind, OperationTicket, Outcome
from corral_emulator.chunks import ChunkShape, Extras, Metrics
from corral_emulator.durations import KeepAlive
from corral_emulator.failures import FailureMode, FailurePlan
from corral_emulator.model_loading import load_model, unload_model
from corral_emulator.models import ModelSpec
from corral_emulator.reply_plan import Piece, ReplyPlan
from corral_emulator.state import EmulatorState
from corral_emulator.timeline import ARRIVED_KEY, TimelineEntry
from corral_emulator.wire import NdjsonWriter, SseWriter, error_response, json_response


@dataclass(frozen=True, slots=True)
class GenerationJob:
    model: str
    """As the client spelled it."""
    spec: ModelSpec
    plan: ReplyPlan
    keep_alive: KeepAlive | None
    stream: bool
    shape: ChunkShape
    failure: FailurePlan | None
    started_ns: int
    """`time.perf_counter_ns()` when the request arrived; total_duration counts from here."""
    sse: bool = False
    """Streamed as server-sent events (the OpenAI-compatible routes) instead of NDJSON."""
    endpoint: str = "chat"
    """What the request-timeline calls it: `chat`, `generate`, `v1_chat`, `v1_completions`."""


async def run_generation(
    request: web.Request, state: EmulatorState, job: GenerationJob
) -> web.StreamResponse:
    failure = job.failure
    if failure is not None and failure.mode is FailureMode.REFUSE:
        return refuse_connection(request)
    if failure is not None and failure.mode is FailureMode.ERROR:
        return error_response(failure.status, failure.message)
    if failure is not None and failure.mode is FailureMode.NOT_FOUND:
        return error_response(404, f"model '{job.model}' not found")

    ticket = state.activity.start(job.spec.full_name, OperationKind.GENERATION)
    mono_ns, wall_ns = request.get(ARRIVED_KEY) or (time.monotonic_ns(), time.time_ns())
    entry = state.timeline.start(job.endpoint, job.spec.full_name, mono_ns, wall_ns)
    writer = SseWriter(request) if job.sse else NdjsonWriter(request)
    try:
        response = await _generate(state, job, ticket, writer, entry)
        if not response.prepared:
            # Written here rather than by aiohttp after the handler, so the timeline's end is
            # the moment the whole answer was handed to the transport, as for a stream.
            await response.prepare(request)
            await response.write_eof()
        state.timeline.end(entry, entry.outcome or Outcome.COMPLETED, entry.tokens)
        return response
    except asyncio.CancelledError:
        # handler_cancellation: aiohttp cancels the handler when the client disconnects.
        ticket.finish(Outcome.CANCELLED, midstream=writer.started)
        state.timeline.end(entry, Outcome.CANCELLED, entry.tokens)
        raise
    except ConnectionError:
        # Without handler cancellation a disconnect only shows up as a failed write.
        ticket.finish(Outcome.CANCELLED, midstream=writer.started)
        state.timeline.end(entry, Outcome.CANCELLED, entry.tokens)
        return writer.response or web.Response()
    finally:
        # Any other exception is an emulator bug; keep the record consistent anyway.
        ticket.finish(Outcome.FAILED)
        state.timeline.end(entry, Outcome.FAILED, entry.tokens)


async def run_load(
    state: EmulatorState,
    spec: ModelSpec,
    context_length: int,
    shape: ChunkShape,
    keep_alive: KeepAlive | None,
) -> web.Response:
    """An empty request: load the model (applying keep_alive) and say so."""
    await load_model(state, spec, context_length, keep_alive)
    return json_response(shape.bare_done("load"))


def run_unload(state: EmulatorState, spec: ModelSpec, shape: ChunkShape) -> web.Response:
    """An empty request with keep_alive 0: answers at once, not waiting for the unload."""
    unload_model(state, spec)
    return json_response(shape.bare_done("unload"))


def refuse_connection(request: web.Request) -> web.Response:
    """Drop the connection without a byte of response, like a crashed or firewalled server."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp's attempt to send this fails quietly on the aborted transport.
    return web.Response()


async def _generate(
    state: EmulatorState,
    job: GenerationJob,
    ticket: OperationTicket,
    writer: NdjsonWriter,
    entry: TimelineEntry,
) -> web.StreamResponse:
    config = state.config
    failure = job.failure
    if failure is not None and failure.mode is FailureMode.HANG:
        await asyncio.get_running_loop().create_future()

    load_started = time.perf_counter_ns()
    runner = await state.runners.acquire(job.spec, job.plan.context_length, job.keep_alive)
    try:
        load_ns = time.perf_counter_ns() - load_started
        prompt_started = time.perf_counter_ns()
        await _sleep_ms(config.prompt_ms_per_token * job.plan.prompt_eval_count)
        prompt_ns = time.perf_counter_ns() - prompt_started
        await state.gate.pass_through()

        eval_started = time.perf_counter_ns()
        emitted: list[Piece] = []
        fail_after = failure.after_tokens if failure is not None else None
        for piece in job.plan.pieces:
            if fail_after is not None and len(emitted) >= fail_after:
                break
            # Read per token: /_emulator/config may change the delay mid-stream.
            await _sleep_ms(state.config.token_delay_ms)
            emitted.append(piece)
            entry.tokens = len(emitted)
            if job.stream:
                shape = job.shape
                await writer.send(
                    shape.thinking(piece.text) if piece.thinking else shape.token(piece.text)
                )
        calls = job.plan.tool_calls if failure is None else ()
        if calls and job.stream:
            # Ollama's tool parser hands the calls over in one chunk of their own.
            await writer.send(job.shape.tool_calls(calls))
        eval_ns = time.perf_counter_ns() - eval_started
    finally:
        # Released before the last write, so a client holding the final chunk already sees
        # the runner's new state (e.g. unloaded by keep_alive 0) in /api/ps.
        state.runners.release(runner)

    if failure is not None:
        ticket.finish(Outcome.FAILED)
        entry.outcome = Outcome.FAILED
        if not writer.started:
            return error_response(failure.status, failure.message)
        await writer.send({"error": failure.message})
        return await writer.close()

    metrics = Metrics(
        total_duration=time.perf_counter_ns() - job.started_ns,
        load_duration=max(load_ns, 1),
        prompt_eval_count=job.plan.prompt_eval_count,
        prompt_eval_duration=max(prompt_ns, 1),
        eval_count=len(emitted) + job.plan.tool_call_tokens,
        eval_duration=max(eval_ns, 1),
    )
    # Counted complete before the final write, so it is visible once the client has it.
    ticket.finish(Outcome.COMPLETED)
    if not job.stream:
        # Non-streamed, Ollama accumulates content, thinking and tool calls into one message.
        text = "".join(piece.text for piece in emitted if not piece.thinking)
        extras = Extras(
            thinking="".join(piece.text for piece in emitted if piece.thinking), tool_calls=calls
        )
        final = job.shape.final(text, job.plan.done_reason, metrics, job.plan.context, extras)
        return json_response(final)
    await writer.send(job.shape.final("", job.plan.done_reason, metrics, job.plan.context))
    return await writer.close()


async def _sleep_ms(milliseconds: float) -> None:
    if milliseconds > 0:
        await asyncio.sleep(milliseconds / 1000)
