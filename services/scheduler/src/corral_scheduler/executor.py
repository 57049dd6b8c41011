"""The executor: one loop per backend server, each taking that server's next job from the lane,
running it through the server's backend, and acking it.

This is the only code that sends work to a backend, and each server's loop runs its job, in
its own task, to its backend response closed (including when cancelled) before taking the
next, which is what makes every server see at most one generation at a time. Nothing of a job
waits after its response is closed, so the loop sends the next job's request in the same step
of the event loop; the finished job's bookkeeping, last token batches, `done` and ack follow in
a task of their own, begun on the loop's next round (`_settle_later`, `_settle`;
docs/reliability.md). The lane's state
(the running jobs, the loaded models, the connection epoch) is the lane's (lane.py); a backend
is whatever implements `backends.base.Backend`.

A server that does not answer (refused, reset, a connect timeout, 502/503, before any
response) while another server in rotation could run the job is taken out of rotation, and
the job goes back to its place in the lane for another server: nothing had been sent to its
client but positions, so nothing is repeated. The server's loop then probes it until it
answers and puts it back. With no other server able to take the job, it is retried in place
(retries.py), as with one backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import orjson
import structlog
from opentelemetry import trace

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    MODEL_OPERATION_KINDS,
    STREAMED_KINDS,
    Cancelled,
    CancelStage,
    Done,
    Failed,
    Job,
    Started,
)
from corral_common.model_names import same_model
from corral_common.telemetry import extract_context, tracer
from corral_scheduler import metrics
from corral_scheduler.answer import Answer
from corral_scheduler.backends.base import (
    Backend,
    BackendStreamError,
    Chunk,
    ChunkRun,
    DoneAnswer,
    EmbedAnswer,
    EmbeddingsAnswer,
    EmbedKind,
    Metrics,
    Piece,
    StreamKind,
)
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink, TokenBatcher
from corral_scheduler.lane import Entry, Lane, Running, Server
from corral_scheduler.load_guard import GuardPolicy, LoadGuard
from corral_scheduler.retries import RetryLimits, retry_reason

log = structlog.get_logger(__name__)

# The cancel reason of a job stopped at its request's total deadline (`Job.finish_by`).
DEADLINE_PASSED = "request deadline passed"
# A server out of rotation is probed after this, doubling up to the cap, until it answers.
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 5.0
# How long stopping waits for finished jobs' events and acks to go out.
SETTLE_ON_STOP_S = 5.0
# A streaming job tells the lane it moves (for the watchdog) at most this often.
PROGRESS_EVERY_S = 0.05


class _FailOver(Exception):
    """The server did not answer and another can run the job: move it there."""


T = TypeVar("T")


class Executor:
    def __init__(
        self,
        lane: Lane,
        backends: Mapping[str, Backend],
        sink: EventSink,
        speeds: SpeedBook,
        guard: LoadGuard | None = None,
        takeover_grace_s: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry: RetryLimits | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.takeover_grace_s = takeover_grace_s
        # Injectable so tests can count the takeover graces and the retries' backoff waits
        # without waiting them out, and draw the backoff's jitter themselves.
        self._sleep = sleep
        self._jitter = jitter
        self.retry = retry or RetryLimits()
        # The broker connection epoch whose takeover grace has been waited (see
        # _settle_after_takeover); None until the first.
        self._settled_epoch: int | None = None
        self.lane = lane
        self.guard = guard or LoadGuard(GuardPolicy())
        missing = set(lane.servers) - set(backends)
        if missing:
            raise ValueError(f"no backend for server(s) {', '.join(sorted(missing))}")
        self.backends = backends
        self.sink = sink
        self.speeds = speeds
        # Finished jobs whose done is being published and delivery acked (`_settle`), and
        # those about to be (`_settle_later`).
        self._settling: set[asyncio.Task[None]] = set()
        self._unsettled: list[tuple[Entry, Callable[[int], Done], TokenBatcher[Any] | None]] = []

    async def run_forever(self) -> None:
        """Every server's loop; one failing ends them all (and the service: app.py)."""
        try:
            async with asyncio.TaskGroup() as group:
                for server in self.lane.servers.values():
                    group.create_task(self.serve(server), name=f"server-{server.name}")
        finally:
            # Finished jobs still being published get their moment (a publish is bounded by
            # the broker's confirm timeout); an unacked one returns to the queue.
            self._begin_settling()
            if self._settling:
                await asyncio.wait(set(self._settling), timeout=SETTLE_ON_STOP_S)

    async def serve(self, server: Server) -> None:
        """One server's loop: its next job, run to its end, then the next."""
        while True:
            if not server.in_rotation:
                await self._probe_until_back(server)
            running = await self.lane.take(server)
            try:
                await self._take(running)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever broke around one job (a publish, an ack, a metric, a span) costs
                # that job, never the lane: before this, one request id too long for a
                # routing key ended this loop, silently, and with it all generation.
                log.exception("handling a job failed", request_id=clip(running.entry.request_id))
                await self._fail(running.entry, exc)

    async def _probe_until_back(self, server: Server) -> None:
        delay = PROBE_FIRST_S
        while True:
            # A real wait whatever `_sleep` is: tests that skip backoff waits still must not
            # spin on a dead server.
            await asyncio.sleep(delay)
            try:
                await self.backends[server.name].version()
            except CorralError:
                delay = min(PROBE_MAX_S, delay * 2)
                continue
            log.info("backend server answers again; back in rotation", server=server.name)
            self.lane.set_rotation(server, True)
            return

    async def _take(self, running: Running) -> None:
        ran = False
        try:
            ran = await self._start(running)
        finally:
            self.lane.finish(running, ran=ran)

    async def _start(self, running: Running) -> bool:
        """Run the assigned job to its end; False when it never started."""
        entry = running.entry
        if self.lane.is_stale(entry):
            # Its delivery died with the old connection; the broker hands it out again.
            return False
        if running.cancel_reason is not None:
            # Cancelled in the moment between its assignment and now: it never ran.
            await self._cancelled_unstarted(entry)
            return False
        deadline = start_by(entry.job)
        if deadline is not None and time.time() >= deadline:
            await self._expire(entry)
            return False
        _score_estimate(entry)
        server = running.server
        swap = server.loaded is None or not same_model(server.loaded, entry.model)
        # Run in this server's own loop, not a task of its own: once the job's backend response
        # is closed, all that is left of it runs without waiting (its settling has tasks of its
        # own, `_settle_later`), so the loop takes the next job in the same step of the event
        # loop, with no round for a task to start or for this loop to be woken. A cancel of the
        # job (`Lane.cancel_running`) cancels this loop's task, and the job's own handling
        # takes it (`_generate`); `_ran_to_its_end` tells a job's cancel from a shutdown.
        loop_task = asyncio.current_task()
        assert loop_task is not None, "the executor runs in a task"
        self.lane.start(running, loop_task, entry.estimate_ms + (entry.load_ms if swap else 0))
        running.deadline_timer = timer = self._arm_deadline(entry)
        try:
            await self._run(running)
        except asyncio.CancelledError:
            pass  # the job's own cancel, or a stop: told apart just below
        finally:
            if timer is not None:
                timer.cancel()
        if not _ran_to_its_end(running, loop_task):
            raise asyncio.CancelledError
        return not running.failed_over

    async def _cancelled_unstarted(self, entry: Entry) -> None:
        metrics.CANCELLATIONS.labels("queued").inc()
        await self.sink.send_quietly(
            entry.job, Cancelled(request_id=entry.request_id, stage="queued")
        )
        await self._ack(entry)

    async def _fail(self, entry: Entry, exc: BaseException) -> None:
        """Fail one job that broke unexpectedly: its client is told, naming the request, and
        its delivery acked; when even that cannot be published (its events cannot be routed,
        say), the delivery is dead-lettered instead, and the gateway learns it from there."""
        job = entry.job
        metrics.JOBS.labels("internal_error").inc()
        failure = Failed(
            request_id=job.request_id,
            status=500,
            error_type=str(ErrorType.INTERNAL_ERROR),
            message=f"internal error while running request {clip(job.request_id)!r}: "
            f"{type(exc).__name__}",
        )
        if await self.sink.send_quietly(job, failure):
            await self._ack(entry)
        else:
            await self._dead_letter(entry)

    async def _expire(self, entry: Entry) -> None:
        """The job waited past its deadline: it never starts; its client gets a 408."""
        metrics.JOBS.labels("queue_timeout").inc()
        await self.sink.send_quietly(entry.job, queue_timeout(entry.job))
        await self._ack(entry)

    def _arm_deadline(self, entry: Entry) -> asyncio.TimerHandle | None:
        """Stop the job when its request's total deadline (`Job.finish_by`) passes while it
        runs: cancelled like a client that left (closing the backend response, which frees the
        lane at once), but answered 504 `backend_timeout` (`request_timeout`)."""
        finish_by = entry.job.finish_by
        if finish_by is None:
            return None
        return asyncio.get_running_loop().call_later(
            max(0.0, finish_by - time.time()),
            self.lane.cancel_running,
            entry.request_id,
            DEADLINE_PASSED,
        )

    async def _run(self, running: Running) -> None:
        """Run one job to its final event and ack it (a finished one is acked by its settling).
        Raises only CancelledError (shutdown: the unacked job goes back to the queue); anything
        else fails this job alone. Nothing is awaited once the backend's response is closed on
        the way to `done`, so its server's loop goes on to the next job at once (`_start`)."""
        entry = running.entry
        job = entry.job
        server = running.server
        with structlog.contextvars.bound_contextvars(
            request_id=clip(job.request_id), session_id=job.session_id, server=server.name
        ):
            try:
                outcome = await self._traced(running)
                metrics.JOBS.labels(outcome).inc()
                if outcome == "done":
                    return  # its settling acks it (`_settle`)
            except _FailOver:
                metrics.SERVER_FAILOVERS.labels(server.name).inc()
                log.warning("backend server not answering; out of rotation, job moved")
                self.lane.set_rotation(server, False)
                self.lane.requeue(running)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug must cost one job, never the lane: fail it and carry on.
                log.exception("job failed unexpectedly")
                await self._fail(entry, exc)
                return
            await self._ack(entry)

    async def _traced(self, running: Running) -> str:
        entry = running.entry
        job = entry.job
        backend = self.backends[running.server.name]
        waited_ms = round((time.time() - job.enqueued_at) * 1000)
        metrics.QUEUE_WAIT.labels(job.model).observe(waited_ms / 1000)
        metrics.CALLER_QUEUE_WAIT.labels(job.owner or "anonymous").observe(waited_ms / 1000)
        parent = extract_context(getattr(entry.delivery, "headers", None))
        span_attrs: dict[str, str | int] = {
            "gen_ai.system": backend.kind,
            "corral.backend.server": running.server.name,
            "gen_ai.operation.name": job.kind,
            "gen_ai.request.model": job.model,
            "corral.request_id": job.request_id,
            "corral.queue_wait_ms": waited_ms,
        }
        with tracer().start_as_current_span(
            "backend generation", context=parent, attributes=span_attrs
        ) as span:
            outcome = await self._generate(running, waited_ms, span)
            if outcome == "done" and job.kind == "unload":
                # Only an unload that happened forgets the model's use on its server: a refused
                # or failed one left the model where it was.
                self.lane.used(job, running.server.name)
            return outcome

    async def _generate(self, running: Running, waited_ms: int, span: trace.Span) -> str:
        job = running.entry.job
        # The batches are of the chunks' JSON lines, relayed as read (`ChunkRun`).
        batcher: TokenBatcher[bytes] = TokenBatcher(
            lambda seq, lines: self.sink.send_tokens(job, seq, lines),
            window_s=self.sink.token_window_s,
        )
        try:
            if job.kind in STREAMED_KINDS:
                conclude = await self._stream(running, waited_ms, batcher, span)
            else:
                answered = await self._call(running, waited_ms)
                conclude = lambda _batches: answered  # noqa: E731
                # No tokens on this path: stop the pump ("Task was destroyed but it is
                # pending" after every embedding, load and unload).
                await batcher.abort()
            if running.deadline_timer is not None:
                # The backend's part is over: its answer goes out whole, not cut by a
                # deadline passing while it is being published.
                running.deadline_timer.cancel()
            self._settle_later(
                running.entry, conclude, batcher if job.kind in STREAMED_KINDS else None
            )
            return "done"
        except asyncio.CancelledError:
            await batcher.abort()
            if running.cancel_reason is None:
                # Shutdown, not a cancel: the unacked job returns to the queue for a standby.
                raise
            stage = running.stage
            if running.cancel_reason == DEADLINE_PASSED:
                metrics.REQUEST_TIMEOUTS.labels(stage).inc()
                log.info("job stopped at its deadline", stage=stage, chunks=running.tokens)
                await self.sink.send_quietly(job, request_timeout(job, stage, running.tokens))
                return "timeout"
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
            # Anything else (a bug, shutdown, a fail-over): the token pump must not outlive
            # its job.
            await batcher.abort()
            raise
        finally:
            if not running.failed_over and job.kind != "unload":
                self.lane.used(job, running.server.name)

    async def _stream(
        self,
        running: Running,
        waited_ms: int,
        batcher: TokenBatcher[bytes],
        span: trace.Span,
    ) -> Callable[[int], Done]:
        """A chat or generate: the backend's chunks go out as token batches as they come.
        Returns what makes its `done` once its token batches are out (`_settle`)."""
        entry = running.entry
        job = entry.job
        backend = self.backends[running.server.name]
        started = time.monotonic()
        await self._settle_after_takeover(entry)
        final: Chunk | None = None
        answer = Answer()
        payload = await self.guard.payload_for(job)
        async with contextlib.AsyncExitStack() as stack:
            # Opened (retried while the backend is not ready), then read to its end; leaving
            # the block closes the upstream response, however it is left.
            kind = cast(StreamKind, job.kind)

            def opening() -> Awaitable[AsyncIterator[Piece]]:
                return stack.enter_async_context(backend.stream(kind, payload))

            chunks = await self._open(running, opening)
            await self.sink.send(
                job,
                Started(
                    request_id=job.request_id,
                    waited_ms=waited_ms,
                    redelivered=bool(getattr(entry.delivery, "redelivered", False)),
                ),
            )
            running.stage = "prompt"
            progress_due = 0.0
            async for piece in chunks:
                # A long generation streaming tokens is a lane that moves, not a stuck one
                # (told the lane at most every PROGRESS_EVERY_S: thousands of chunks a second
                # need not each tell it).
                now = time.monotonic()
                if now >= progress_due:
                    self.lane.progressed()
                    progress_due = now + PROGRESS_EVERY_S
                if running.tokens == 0:
                    running.stage = "generating"
                    metrics.TIME_TO_FIRST_TOKEN.labels(job.model).observe(now - started)
                if type(piece) is ChunkRun:
                    running.tokens += len(piece.chunks)
                    batcher.extend(piece.lines)
                    answer.take(piece.chunks)
                    continue
                chunk = piece
                running.tokens += 1
                answer.take([chunk])
                if chunk.get("done"):
                    final = chunk
                else:
                    batcher.add(orjson.dumps(chunk))
        # How the generation ended: its final chunk; a stream that ended without one has no
        # reason or metrics (`{}`).
        ending: Metrics = final if final is not None else {}
        # The upstream response is closed and its model known: the server's next job may start.
        self.lane.set_loaded(
            running.server, None if ending.get("done_reason") == "unload" else job.model
        )
        # What is left is bookkeeping, done when the job is settled (after the next job's
        # request is out), but for the span's own attributes: it ends when this returns.
        seconds = time.monotonic() - started
        ended_ns = time.time_ns()
        _describe(span, ending)

        def conclude(token_batches: int) -> Done:
            self._observe(job, ending, seconds, span, ended_ns)
            return Done(
                request_id=job.request_id,
                gateway_id=job.gateway_id,
                token_batches=token_batches,
                final=ending,
                text=answer.text,
                thinking=answer.thinking,
                tool_calls=answer.tool_calls,
                enqueued_at=job.enqueued_at,
                waited_ms=waited_ms,
                model=job.model,
                job_kind=job.kind,
                session_id=job.session_id,
                turn=job.turn,
                owner=job.owner,
                metadata=job.metadata,
            )

        return conclude

    def _settle_later(
        self, entry: Entry, conclude: Callable[[int], Done], batcher: TokenBatcher[Any] | None
    ) -> None:
        """Settle the job, starting on the loop's next round rather than now: its server's
        loop goes on to the next job at once and sends its request before this job's last
        batches and `done` take the loop's time (`_begin_settling`)."""
        self._unsettled.append((entry, conclude, batcher))
        if len(self._unsettled) == 1:
            asyncio.get_running_loop().call_soon(self._begin_settling)

    def _begin_settling(self) -> None:
        pending, self._unsettled = self._unsettled, []
        for entry, conclude, batcher in pending:
            task = asyncio.create_task(self._settle(entry, conclude, batcher), name="settle")
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _settle(
        self, entry: Entry, conclude: Callable[[int], Done], batcher: TokenBatcher[Any] | None
    ) -> None:
        """A finished job's last token batches out, its bookkeeping done and its `done`
        published, then its delivery acked, while its server already runs the next job: the
        backend's response is closed before this starts, so the server is never asked for two
        at once, and the job is acked as soon as its `done` is confirmed (docs/reliability.md,
        "Settling off the lane"). A failure here is the job's alone, as it was before."""
        try:
            batches = await batcher.close() if batcher is not None else 0
            await self.sink.send(entry.job, conclude(batches))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("publishing a finished job failed", request_id=clip(entry.request_id))
            await self._fail(entry, exc)
            return
        await self._ack(entry)

    async def _settle_after_takeover(self, entry: Entry) -> None:
        """A redelivered job may have been running on a scheduler that just died. The backend
        only stops that generation when it next writes to the dead connection, so give it a
        moment first: two generations must never overlap, even across a failover.

        Once per takeover, not per redelivered job: only one job can have been running on the
        dead scheduler, and once the grace has passed its request is gone, so the jobs handed
        over behind it run at once (100 handed-over jobs used to wait 100 graces). A takeover
        happens on a broker connection (this scheduler's consumer becoming the active one), so
        the grace is waited once per connection epoch: after a reconnect, another scheduler
        may have been running the lane meanwhile, and the next takeover waits again.
        """
        if self.takeover_grace_s <= 0 or not getattr(entry.delivery, "redelivered", False):
            return
        if self._settled_epoch == self.lane.connection_epoch:
            return
        self._settled_epoch = self.lane.connection_epoch
        log.info("took over the lane; letting the backend drop the old request first")
        metrics.TAKEOVER_GRACES.inc()
        await self._sleep(self.takeover_grace_s)

    async def _call(self, running: Running, waited_ms: int) -> Done:
        """Embeddings, loads and unloads: one request, one answer, carried whole in `final`."""
        entry = running.entry
        server = running.server
        job = entry.job
        if job.kind == "unload" and not job.force:
            # Work for this model is queued behind us: unloading now would only make it
            # reload. (Nothing is running: this is the running job.)
            queued = self.lane.count(lambda e: same_model(e.job.model, job.model))
            if queued:
                metrics.MODEL_OPERATIONS.labels(job.kind, "skipped_busy").inc()
                raise CorralError(
                    ErrorType.MODEL_BUSY,
                    f"model '{job.model}' has {queued} queued request(s); not unloaded",
                    details={"model": job.model, "queued": queued},
                )
        if job.kind in MODEL_OPERATION_KINDS:
            log.info("model operation", operation=job.kind, model=job.model)
        await self._settle_after_takeover(entry)
        payload = await self.guard.payload_for(job)
        backend = self.backends[server.name]
        answer = await self._open(running, lambda: _call_backend(backend, job, payload))
        if job.kind == "unload":
            if server.loaded is not None and same_model(server.loaded, job.model):
                self.lane.set_loaded(server, None)
        else:
            self.lane.set_loaded(server, job.model)
        if job.kind in MODEL_OPERATION_KINDS:
            metrics.MODEL_OPERATIONS.labels(job.kind, "done").inc()
        load_ns = answer.get("load_duration")
        if isinstance(load_ns, int) and load_ns >= 50_000_000:
            metrics.MODEL_LOADS.labels(job.model).inc()
        return Done(
            request_id=job.request_id,
            gateway_id=job.gateway_id,
            token_batches=0,
            final=answer,
            text="",
            enqueued_at=job.enqueued_at,
            waited_ms=waited_ms,
            model=job.model,
            job_kind=job.kind,
        )

    async def _open(self, running: Running, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` (opening the job's backend request), retried while the backend is not
        ready (retries.py: refused, reset before any response, a connect timeout, 502/503),
        with full-jitter exponential backoff, up to the job's retries and never past its
        deadline. The job keeps the lane meanwhile: its client sees only a longer wait (no
        `started` before the backend takes it), the jobs behind it keep their places. Once a
        response has begun, nothing is retried. In a pool, a server not ready while another
        could run the job is left instead (`_FailOver`, module docstring)."""
        entry = running.entry
        job = entry.job
        policy = self.retry.for_job(job)
        retries = 0
        while True:
            try:
                result = await attempt()
            except CorralError as exc:
                reason = retry_reason(exc)
                if reason is None:
                    if retries:
                        metrics.BACKEND_RETRY_OUTCOMES.labels("failed").inc()
                    raise
                if self.lane.can_fail_over(running.server, entry):
                    running.failed_over = True
                    raise _FailOver(reason) from exc
                if retries >= policy.max_retries:
                    metrics.BACKEND_RETRY_OUTCOMES.labels("exhausted").inc()
                    log.info("backend not ready; out of retries", reason=reason, retries=retries)
                    raise
                delay = policy.delay_s(retries, self._jitter)
                if job.finish_by is not None and time.time() + delay >= job.finish_by:
                    metrics.BACKEND_RETRY_OUTCOMES.labels("deadline").inc()
                    log.info("backend not ready; no time left to retry", reason=reason)
                    raise
                retries += 1
                metrics.BACKEND_RETRIES.labels(reason).inc()
                log.info(
                    "backend not ready; retrying",
                    reason=reason,
                    retry=retries,
                    max_retries=policy.max_retries,
                    delay_s=round(delay, 3),
                )
                # A lane retrying its backend is moving, not stuck (watchdog.py).
                self.lane.progressed()
                await self._sleep(delay)
                continue
            if retries:
                metrics.BACKEND_RETRY_OUTCOMES.labels("recovered").inc()
                log.info("backend ready after retries", retries=retries)
            return result

    def _observe(
        self, job: Job, final: Metrics, seconds: float, span: trace.Span, ended_ns: int
    ) -> None:
        """A finished generation's metrics, speeds and phase spans (`span` has ended by now;
        its children are timed to end at `ended_ns`)."""
        self.speeds.observe(job.model, final, job.prompt_chars)
        metrics.GENERATION_SECONDS.labels(job.model).observe(seconds)
        prompt_tokens = final.get("prompt_eval_count") or 0
        eval_tokens = final.get("eval_count") or 0
        metrics.TOKENS.labels(job.model, "prompt").inc(prompt_tokens)
        metrics.TOKENS.labels(job.model, "completion").inc(eval_tokens)
        if (final.get("load_duration") or 0) >= 50_000_000:
            metrics.MODEL_LOADS.labels(job.model).inc()
        record_phase_spans(job, final, span, ended_ns)

    async def _ack(self, entry: Entry) -> None:
        if self.lane.is_stale(entry):
            return
        try:
            await entry.delivery.ack()
        except Exception as exc:  # the channel died; the broker will redeliver the job
            log.warning("ack failed", error=str(exc))

    async def _dead_letter(self, entry: Entry) -> None:
        """To `corral.dlx`: kept for ops, and the job's gateway fails its request from there."""
        if self.lane.is_stale(entry):
            return
        metrics.JOBS_DEAD_LETTERED.labels("failure_unpublished").inc()
        try:
            await entry.delivery.reject(requeue=False)
        except Exception as exc:
            log.warning("dead-lettering failed", error=str(exc))


def _ran_to_its_end(running: Running, loop_task: asyncio.Task[Any]) -> bool:
    """After a job run in its server's loop: the cancel its own cancel (`cancel_running`)
    asked of the loop's task is taken back (once: it asks once). True when no other cancel
    was asked, so the loop goes on; False when one was (the loop is being stopped: a
    shutdown, a handover), which must not be swallowed with the job's."""
    if running.cancel_reason is not None and loop_task.cancelling():
        loop_task.uncancel()
    return loop_task.cancelling() == 0


def _call_backend(
    backend: Backend, job: Job, payload: dict[str, Any]
) -> Awaitable[DoneAnswer | EmbedAnswer | EmbeddingsAnswer]:
    if job.kind == "load":
        return backend.load(payload)
    if job.kind == "unload":
        return backend.unload(payload)
    return backend.embed(cast(EmbedKind, job.kind), payload)


def _score_estimate(entry: Entry) -> None:
    """How far the first wait estimate the client saw was from the wait it really had."""
    if entry.first_estimate is None:
        return
    told_at, estimate_ms = entry.first_estimate
    actual_ms = (time.monotonic() - told_at) * 1000
    metrics.ESTIMATE_ERROR.observe(abs(actual_ms - estimate_ms) / 1000)
    bias_s = (estimate_ms - actual_ms) / 1000
    metrics.ESTIMATE_BIAS.observe(bias_s)
    metrics.ESTIMATE_BIAS_SUM.inc(bias_s)


def start_by(job: Job) -> float | None:
    """When the job must have started: its queue deadline, or its total deadline if sooner."""
    deadlines = [d for d in (job.deadline, job.finish_by) if d is not None]
    return min(deadlines) if deadlines else None


def request_timeout(job: Job, stage: CancelStage, chunks: int) -> Failed:
    """The job ran past its request's total deadline and was stopped: 504 `backend_timeout`.
    What it had generated is not kept (no `done`, so no turn is stored); a streaming client
    has the tokens it was sent, then this error as its last line (docs/request-path.md)."""
    elapsed_s = max(0.0, time.time() - job.enqueued_at)
    return Failed(
        request_id=job.request_id,
        status=504,
        error_type=str(ErrorType.BACKEND_TIMEOUT),
        message=f"request timed out after {elapsed_s:.1f} s (its deadline) while "
        f"{_STAGE_WORDS[stage]}; the generation was stopped and its partial answer is not kept",
        details={"stage": stage, "elapsed_ms": round(elapsed_s * 1000), "chunks": chunks},
    )


_STAGE_WORDS: dict[str, str] = {
    "admission": "being admitted",
    "queued": "queued",
    "loading": "loading the model",
    "prompt": "evaluating the prompt",
    "generating": "generating",
}


def queue_timeout(job: Job) -> Failed:
    waited_s = max(0.0, time.time() - job.enqueued_at)
    return Failed(
        request_id=job.request_id,
        status=408,
        error_type=str(ErrorType.QUEUE_TIMEOUT),
        message=f"request timed out in the queue after {waited_s:.1f} s",
        details={"waited_ms": round(waited_s * 1000)},
    )


def _describe(span: trace.Span, final: Metrics) -> None:
    """The generation span's attributes from the backend's final chunk."""
    span.set_attribute("gen_ai.usage.input_tokens", final.get("prompt_eval_count") or 0)
    span.set_attribute("gen_ai.usage.output_tokens", final.get("eval_count") or 0)
    span.set_attribute("gen_ai.response.finish_reasons", [str(final.get("done_reason", ""))])


def record_phase_spans(
    job: Job, final: Metrics, parent: trace.Span, ended_ns: int | None = None
) -> None:
    """Queue wait, load, prompt evaluation and generation as child spans, timed by the backend's
    own durations (laid end to end, ending at `ended_ns`, epoch ns; now when None)."""
    now = time.time_ns() if ended_ns is None else ended_ns
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
