"""The single executor: takes jobs from the lane head and runs them one at a time.

This is the only code that sends generations to the backend, and it awaits each one to its
end (including closing the upstream response when cancelled) before taking the next, which is
what makes the backend see at most one generation at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    Cancelled,
    CancelStage,
    Done,
    Failed,
    Job,
    Started,
    Tokens,
)
from corral_common.telemetry import extract_context, tracer
from corral_scheduler import metrics
from corral_scheduler.backend import BackendStreamError, OllamaBackend
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink, TokenBatcher
from corral_scheduler.lane import Entry, Lane

log = structlog.get_logger(__name__)

RATE_WINDOW_S = 60.0


@dataclass
class Running:
    entry: Entry
    task: asyncio.Task[None]
    started_at: float
    stage: CancelStage = "loading"
    tokens: int = 0
    cancel_reason: str | None = None


class Executor:
    def __init__(
        self,
        lane: Lane,
        backend: OllamaBackend,
        sink: EventSink,
        speeds: SpeedBook,
    ) -> None:
        self.lane = lane
        self.backend = backend
        self.sink = sink
        self.speeds = speeds
        self.running: Running | None = None
        self.loaded_model: str | None = None
        # Bumped on every broker connection loss; see Entry.generation.
        self.generation = 0
        self.lane_moved = asyncio.Event()
        self.status_requested = asyncio.Event()
        # Finish times over the last minute, for the processing rate.
        self.finished_at: deque[float] = deque()

    async def run_forever(self) -> None:
        while True:
            entry = await self.lane.pop()
            if entry.generation < self.generation:
                # Its delivery died with the old connection; the broker hands it out again.
                continue
            task = asyncio.create_task(self._run(entry), name=f"job-{entry.request_id}")
            self.running = Running(entry, task, time.monotonic())
            metrics.QUEUE_RUNNING.set(1)
            self.lane_moved.set()
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise
            finally:
                self.running = None
                metrics.QUEUE_RUNNING.set(0)
                now = time.monotonic()
                self.finished_at.append(now)
                while self.finished_at[0] < now - RATE_WINDOW_S:
                    self.finished_at.popleft()
                self.lane_moved.set()

    def cancel_running(self, request_id: str, reason: str) -> bool:
        running = self.running
        if running is None or running.entry.request_id != request_id:
            return False
        running.cancel_reason = reason
        running.task.cancel()
        return True

    def remaining_ms(self) -> int:
        running = self.running
        if running is None:
            return 0
        elapsed = (time.monotonic() - running.started_at) * 1000
        return max(0, round(running.entry.estimate_ms - elapsed))

    async def _run(self, entry: Entry) -> None:
        job = entry.job
        waited_ms = round((time.time() - job.enqueued_at) * 1000)
        metrics.QUEUE_WAIT.labels(job.model).observe(waited_ms / 1000)
        parent = extract_context(getattr(entry.delivery, "headers", None))
        span_attrs = {
            "gen_ai.system": "ollama",
            "gen_ai.operation.name": job.kind,
            "gen_ai.request.model": job.model,
            "corral.request_id": job.request_id,
            "corral.queue_wait_ms": waited_ms,
        }
        with (
            structlog.contextvars.bound_contextvars(
                request_id=job.request_id, session_id=job.session_id
            ),
            tracer().start_as_current_span(
                "backend generation", context=parent, attributes=span_attrs
            ) as span,
        ):
            try:
                outcome = await self._generate(entry, waited_ms, span)
            except Exception as exc:
                # A bug must cost one job, never the lane: fail it and carry on.
                log.exception("job failed unexpectedly")
                outcome = "internal_error"
                failure = Failed(
                    request_id=job.request_id,
                    status=500,
                    error_type=str(ErrorType.INTERNAL_ERROR),
                    message=f"internal error: {type(exc).__name__}",
                )
                await self.sink.send_quietly(job, failure)
            metrics.JOBS.labels(outcome).inc()
            await self._ack(entry)

    async def _generate(self, entry: Entry, waited_ms: int, span: trace.Span) -> str:
        job = entry.job
        running = self.running
        batcher = TokenBatcher(
            lambda seq, chunks: self.sink.send(
                job, Tokens(request_id=job.request_id, seq=seq, chunks=chunks)
            )
        )
        started = time.monotonic()
        if self.loaded_model is not None and self.loaded_model.lower() != job.model.lower():
            metrics.MODEL_SWAPS.inc()
        try:
            async with self.backend.generation(job.kind, job.payload) as chunks:
                await self.sink.send(
                    job,
                    Started(
                        request_id=job.request_id,
                        waited_ms=waited_ms,
                        redelivered=bool(getattr(entry.delivery, "redelivered", False)),
                    ),
                )
                if running is not None:
                    running.stage = "prompt"
                final: dict[str, Any] = {}
                text: list[str] = []
                thinking: list[str] = []
                tool_calls: list[dict[str, Any]] = []
                async for chunk in chunks:
                    if running is not None and running.tokens == 0:
                        running.stage = "generating"
                        metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(
                            time.monotonic() - started
                        )
                    if running is not None:
                        running.tokens += 1
                    if chunk.get("done"):
                        final = chunk
                    else:
                        batcher.add(chunk)
                    part = _answer_part(chunk)
                    text.append(str(part.get("content") or ""))
                    thinking.append(str(part.get("thinking") or ""))
                    tool_calls.extend(part.get("tool_calls") or [])
            batches = await batcher.close()
            self.loaded_model = job.model
            self._observe(job, final, time.monotonic() - started, span)
            await self.sink.send(
                job,
                Done(
                    request_id=job.request_id,
                    gateway_id=job.gateway_id,
                    token_batches=batches,
                    final=final,
                    text="".join(text),
                    thinking="".join(thinking),
                    tool_calls=tool_calls,
                    enqueued_at=job.enqueued_at,
                    waited_ms=waited_ms,
                    model=job.model,
                    job_kind=job.kind,
                    session_id=job.session_id,
                    turn=job.turn,
                    owner=job.owner,
                ),
            )
            return "done"
        except asyncio.CancelledError:
            await batcher.abort()
            if running is None or running.cancel_reason is None:
                # Shutdown, not a cancel: the unacked job returns to the queue for a standby.
                raise
            stage = running.stage
            metrics.CANCELLATIONS.labels(stage).inc()
            log.info("job cancelled", stage=stage, reason=running.cancel_reason)
            await self.sink.send_quietly(job, Cancelled(request_id=job.request_id, stage=stage))
            return "cancelled"
        except CorralError as exc:
            await batcher.abort()
            metrics.BACKEND_ERRORS.labels(str(exc.error_type)).inc()
            log.info("backend refused job", status=exc.status, error_type=str(exc.error_type))
            await self.sink.send_quietly(
                job,
                Failed(
                    request_id=job.request_id,
                    status=exc.status,
                    error_type=str(exc.error_type),
                    message=exc.message,
                    details=exc.details,
                ),
            )
            return "error"
        except BackendStreamError as exc:
            batches = await batcher.close()
            metrics.BACKEND_ERRORS.labels("midstream").inc()
            log.info("backend failed mid-stream", error=str(exc))
            await self.sink.send_quietly(
                job,
                Failed(
                    request_id=job.request_id,
                    status=500,
                    error_type=str(ErrorType.BACKEND_ERROR),
                    message=str(exc),
                    token_batches=batches,
                ),
            )
            return "error"
        except BaseException:
            # Anything else (a bug, shutdown): the token pump must not outlive its job.
            await batcher.abort()
            raise

    def _observe(self, job: Job, final: dict[str, Any], seconds: float, span: trace.Span) -> None:
        self.speeds.observe(job.model, final)
        metrics.GENERATION_SECONDS.labels(job.model).observe(seconds)
        prompt_tokens = final.get("prompt_eval_count") or 0
        eval_tokens = final.get("eval_count") or 0
        metrics.TOKENS.labels(job.model, "prompt").inc(prompt_tokens)
        metrics.TOKENS.labels(job.model, "completion").inc(eval_tokens)
        if (final.get("load_duration") or 0) >= 50_000_000:
            metrics.MODEL_LOADS.labels(job.model).inc()
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", eval_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [str(final.get("done_reason", ""))])
        record_phase_spans(job, final, span)

    async def _ack(self, entry: Entry) -> None:
        if entry.generation < self.generation:
            return
        try:
            await entry.delivery.ack()
        except Exception as exc:  # the channel died; the broker will redeliver the job
            log.warning("ack failed", error=str(exc))


def record_phase_spans(job: Job, final: dict[str, Any], parent: trace.Span) -> None:
    """Queue wait, load, prompt evaluation and generation as child spans, timed by the backend's
    own durations (laid end to end, ending now)."""
    now = time.time_ns()
    phases = [
        ("model load", int(final.get("load_duration") or 0)),
        ("prompt eval", int(final.get("prompt_eval_duration") or 0)),
        ("generation", int(final.get("eval_duration") or 0)),
    ]
    context = trace.set_span_in_context(parent)
    start = now - sum(duration for _, duration in phases)
    wait_start = int(job.enqueued_at * 1e9)
    tracer().start_span("queue wait", context=context, start_time=wait_start).end(
        end_time=max(wait_start, start)
    )
    for name, duration in phases:
        span = tracer().start_span(
            name, context=context, start_time=start, attributes={"gen_ai.request.model": job.model}
        )
        start += duration
        span.end(end_time=start)


def _answer_part(chunk: dict[str, Any]) -> dict[str, Any]:
    """The part of a chunk that carries the answer: `message` for chat, the chunk itself (with
    `response` as its content) for generate."""
    message = chunk.get("message")
    if isinstance(message, dict):
        return message
    return {**chunk, "content": chunk.get("response")}
