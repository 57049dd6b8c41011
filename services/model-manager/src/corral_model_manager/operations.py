"""Pulls, pushes and creates: long backend operations that belong to the service, not to a
request.

A pull (or push) runs as a background task of the model manager and keeps going when the
client that asked for it leaves. Any number of requests watch it: a second pull (push) of the
same model joins the one under way (first getting its latest line) instead of asking the
backend twice. Every
backend line reaches every watcher as a `Progress` event, in order, thinned by the throttle;
the end is the backend's `{"status": "success"}` (`final`) or one `Failed` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog

from corral_common.broker import Unroutable, encode
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.messages import Failed, Progress
from corral_common.model_names import canonical_model_name
from corral_common.supervision import spawn
from corral_common.timeouts import within
from corral_common.topology import event_key
from corral_model_manager import metrics
from corral_model_manager.throttle import ProgressThrottle, Step

log = structlog.get_logger(__name__)

# Publishes one event durably to `routing_key` (confirmed, mandatory, on the one confirm
# channel, so a watcher's events stay in order).
Publish = Callable[[str, bytes], Awaitable[None]]
# Runs once an operation succeeded, before its final line goes out: by the time a client sees
# `success`, every gateway has been told the new model list.
SuccessHook = Callable[["ModelOperation"], Awaitable[None]]


class LineSource(Protocol):
    """Where an operation's lines come from (`Backend`, or a script in tests)."""

    def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...


OperationKind = Literal["pull", "push", "create"]
OperationState = Literal["running", "success", "error"]

FINISHED_REMEMBERED = 20
# On shutdown, operations get this long to tell their watchers they were interrupted.
CLOSE_GRACE_S = 5.0


@dataclass(slots=True)
class Watcher:
    """A request (on some gateway) that receives an operation's events."""

    gateway_id: str
    request_id: str
    seq: int = 0
    # Backend lines before this one were already sent to it (as its catch-up line on joining).
    next_index: int = 0


@dataclass(frozen=True, slots=True)
class _Join:
    watcher: Watcher


@dataclass(frozen=True, slots=True)
class _End:
    """The backend's stream ended: cleanly (`error` None) or with a failure."""

    error: CorralError | None


_Item = Step | _Join | _End


def is_success(line: dict[str, Any]) -> bool:
    return line.get("status") == "success"


def failed_event(request_id: str, error: CorralError) -> Failed:
    return Failed(
        request_id=request_id,
        status=error.status,
        error_type=str(error.error_type),
        message=error.message,
        details=error.details,
    )


class ModelOperation:
    def __init__(
        self,
        kind: OperationKind,
        model: str,
        path: str,
        body: dict[str, Any],
        *,
        backend: LineSource,
        publish: Publish,
        interval_s: float,
        on_success: SuccessHook,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.model = model
        self._path = path
        self._body = body
        self._backend = backend
        self._publish = publish
        self._on_success = on_success
        self._clock = clock
        self._monotonic = monotonic
        self._throttle = ProgressThrottle(interval_s, monotonic)
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._watchers: list[Watcher] = []
        self._latest: Step | None = None
        self._closed = False

        self.state: OperationState = "running"
        self.status: str | None = None
        # The pool server the latest line came from (a pool's pull runs on each in turn).
        self.server: str | None = None
        self.digest: str | None = None
        self.total: int | None = None
        self.completed: int | None = None
        self.error: str | None = None
        self._failure: CorralError | None = None
        self.started_at = clock()
        self.updated_at = self.started_at

    # -- watching ----------------------------------------------------------------------------

    def watch(self, watcher: Watcher) -> bool:
        """Add a watcher; False once the operation has finished (start a new one instead)."""
        if self._closed:
            return False
        self._inbox.put_nowait(_Join(watcher))
        return True

    def interrupt(self, error: CorralError) -> None:
        """End the operation with `error` (shutdown): watchers are told, not left waiting."""
        self._inbox.put_nowait(_End(error))

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def describe(self) -> dict[str, Any]:
        percent = None
        if self.total and self.completed is not None:
            percent = round(min(self.completed / self.total, 1.0) * 100, 1)
        where = {"server": self.server} if self.server is not None else {}
        return {
            **where,
            "model": self.model,
            "state": self.state,
            "status": self.status,
            "digest": self.digest,
            "total": self.total,
            "completed": self.completed,
            "percent": percent,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "error": self.error,
            "watchers": self.watchers,
        }

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        reader = asyncio.create_task(self._read(), name=f"{self.kind}-reader")
        try:
            await self._pump()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self) -> None:
        index = 0
        try:
            async for line in self._backend.stream(self._path, self._body):
                self._inbox.put_nowait(Step(index, line))
                index += 1
        except CorralError as exc:
            self._inbox.put_nowait(_End(exc))
        except Exception as exc:
            log.exception("reading the backend's stream failed", kind=self.kind)
            self._inbox.put_nowait(
                _End(CorralError(ErrorType.INTERNAL_ERROR, f"{self.kind} failed: {exc}"))
            )
        else:
            self._inbox.put_nowait(_End(None))

    async def _pump(self) -> None:
        while True:
            item = await self._next()
            if item is None:
                await self._send(self._throttle.due())
            elif isinstance(item, _Join):
                await self._join(item.watcher)
            elif isinstance(item, _End):
                await self._fail(
                    item.error
                    or CorralError(
                        ErrorType.BACKEND_ERROR, f"the backend's {self.kind} ended without success"
                    )
                )
                break
            else:
                self._track(item)
                error = item.line.get("error")
                if error is not None:
                    # Ollama's way to fail after the stream started (an unknown model's pull:
                    # `pull model manifest: file does not exist`).
                    await self._fail(CorralError(ErrorType.BACKEND_ERROR, str(error), status=500))
                    break
                if is_success(item.line):
                    await self._succeed(item)
                    break
                await self._send(self._throttle.offer(item))
        # From here on `watch` refuses; joins that were queued before still get the outcome.
        self._closed = True
        while not self._inbox.empty():
            late = self._inbox.get_nowait()
            if isinstance(late, _Join):
                await self._join(late.watcher)

    async def _next(self) -> _Item | None:
        """The next item, or None when the held progress line is due first."""
        due_at = self._throttle.due_at()
        if due_at is None:
            return await self._inbox.get()
        try:
            return await within(self._inbox.get(), max(0.0, due_at - self._monotonic()))
        except TimeoutError:
            return None

    def _track(self, step: Step) -> None:
        line = step.line
        self._latest = step
        self.updated_at = self._clock()
        if isinstance(line.get("status"), str):
            self.status = line["status"]
        if isinstance(line.get("server"), str):
            self.server = line["server"]
        if "total" in line or "completed" in line:
            self.digest = line.get("digest") if isinstance(line.get("digest"), str) else None
            self.total = _int_or_none(line.get("total"))
            self.completed = _int_or_none(line.get("completed")) or 0

    async def _succeed(self, step: Step) -> None:
        await self._send(self._throttle.flush())
        self.state = "success"
        try:
            await self._on_success(self)
        except Exception:
            log.exception("after-success hook failed", kind=self.kind, model=self.model)
        await self._send([step])

    async def _fail(self, error: CorralError) -> None:
        await self._send(self._throttle.flush())
        self.state = "error"
        self.error = error.message
        self._failure = error
        self.updated_at = self._clock()
        log.warning(f"{self.kind} failed", model=self.model, error=error.message)
        await asyncio.gather(*(self._tell(w, error) for w in list(self._watchers)))

    async def _join(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)
        if self._failure is not None:
            await self._tell(watcher, self._failure)
            return
        # A joiner starts from where the operation is, not from its beginning.
        if self._latest is not None:
            await self._deliver(watcher, self._latest)
            watcher.next_index = self._latest.index + 1

    async def _send(self, steps: list[Step]) -> None:
        for step in steps:
            targets = [w for w in self._watchers if step.index >= w.next_index]
            await asyncio.gather(*(self._deliver(w, step) for w in targets))

    async def _deliver(self, watcher: Watcher, step: Step) -> None:
        event = Progress(
            request_id=watcher.request_id,
            seq=watcher.seq,
            line=step.line,
            final=is_success(step.line),
        )
        if await self._publish_to(watcher, "progress", encode(event)):
            watcher.seq += 1

    async def _tell(self, watcher: Watcher, error: CorralError) -> None:
        await self._publish_to(watcher, "error", encode(failed_event(watcher.request_id, error)))

    async def _publish_to(self, watcher: Watcher, kind: str, body: bytes) -> bool:
        """One watcher's trouble is its own: the operation and the others carry on."""
        try:
            await self._publish(event_key(watcher.gateway_id, watcher.request_id, kind), body)
        except Unroutable:
            # Its gateway is gone (its queue went with it): nobody will ever read these.
            log.info("watcher's gateway is gone", request_id=watcher.request_id)
            with contextlib.suppress(ValueError):
                self._watchers.remove(watcher)
            return False
        except Exception as exc:
            log.warning("progress not published", request_id=watcher.request_id, error=str(exc))
            return False
        return True


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


class ModelOperations:
    """The operations under way and recently finished; pulls of one model are shared."""

    def __init__(
        self,
        backend: LineSource,
        publish: Publish,
        *,
        interval_s: float,
        on_success: SuccessHook,
        on_failure: SuccessHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._publish = publish
        self._interval_s = interval_s
        self._on_success = on_success
        # Runs after an operation failed: on a pool, a pull may have succeeded on some servers.
        self._on_failure = on_failure
        self._clock = clock
        # Pulls and pushes under way by kind and model: a second request for one joins it.
        self._shared_ops: dict[str, ModelOperation] = {}
        self._running: dict[str, ModelOperation] = {}
        self._finished: deque[ModelOperation] = deque(maxlen=FINISHED_REMEMBERED)
        self._tasks: set[asyncio.Task[None]] = set()

    def pull(self, model: str, watcher: Watcher, *, insecure: bool = False) -> bool:
        """Start pulling `model`, or join the pull of it under way; True when joined."""
        return self._shared("pull", model, watcher, insecure=insecure)

    def push(self, model: str, watcher: Watcher, *, insecure: bool = False) -> bool:
        """Start pushing `model`, or join the push of it under way; True when joined. Like a
        pull, it belongs to the service: a client that leaves does not stop it."""
        return self._shared("push", model, watcher, insecure=insecure)

    def _shared(
        self, kind: Literal["pull", "push"], model: str, watcher: Watcher, *, insecure: bool
    ) -> bool:
        key = f"{kind}:{canonical_model_name(model)}"
        running = self._shared_ops.get(key)
        if running is not None and running.watch(watcher):
            return True
        body: dict[str, Any] = {"model": model}
        if insecure:
            body["insecure"] = True
        operation = self._operation(kind, model, f"/api/{kind}", body)
        operation.watch(watcher)
        self._shared_ops[key] = operation
        self._start(operation)
        return False

    def create(self, body: dict[str, Any], watcher: Watcher) -> None:
        """Start a create: never shared, each request's body is its own."""
        model = body.get("model") or body.get("name") or ""
        operation = self._operation("create", str(model), "/api/create", body)
        operation.watch(watcher)
        self._start(operation)

    def pulls(self) -> list[dict[str, Any]]:
        """Pulls under way, then the most recently finished first."""
        running = [op for op in self._running.values() if op.kind == "pull"]
        finished = [op for op in reversed(self._finished) if op.kind == "pull"]
        return [op.describe() for op in [*running, *finished]]

    async def close(self) -> None:
        interrupted = CorralError(
            ErrorType.INTERRUPTED,
            "the model manager stopped; the operation was interrupted",
            status=503,
        )
        for operation in self._running.values():
            operation.interrupt(interrupted)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def settled(self) -> None:
        """Return once every operation running now has finished (and been counted)."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _operation(
        self, kind: OperationKind, model: str, path: str, body: dict[str, Any]
    ) -> ModelOperation:
        return ModelOperation(
            kind,
            model,
            path,
            body,
            backend=self._backend,
            publish=self._publish,
            interval_s=self._interval_s,
            on_success=self._on_success,
            clock=self._clock,
        )

    def _start(self, operation: ModelOperation) -> None:
        operation_id = new_id()
        self._running[operation_id] = operation
        spawn(self._run(operation_id, operation), name=operation.kind, keep=self._tasks)

    async def _run(self, operation_id: str, operation: ModelOperation) -> None:
        outcome = "cancelled"
        try:
            await operation.run()
            outcome = operation.state
            if outcome == "error" and self._on_failure is not None:
                try:
                    await self._on_failure(operation)
                except Exception:
                    log.exception("after-failure hook failed", kind=operation.kind)
        finally:
            del self._running[operation_id]
            key = f"{operation.kind}:{canonical_model_name(operation.model)}"
            if self._shared_ops.get(key) is operation:
                del self._shared_ops[key]
            self._finished.append(operation)
            if operation.kind == "pull":
                metrics.PULLS.labels(outcome).inc()
            elif operation.kind == "push":
                metrics.PUSHES.labels(outcome).inc()
            log.info(f"{operation.kind} finished", model=operation.model, outcome=outcome)
