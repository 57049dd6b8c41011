"""Supervised background tasks: a named task that is logged and restarted, or fails the service.

Every long-lived task in every Corral service runs under `supervised(...)`. Before this, a loop
that raised died silently: its exception sat on a task object nobody awaited until shutdown
(the scheduler's executor once died on one job with a routing key over 255 bytes, and the
lane stopped for everyone while `/health` said "healthy").

What a supervised task does when it raises is chosen per task:

- `restart`: the exception is logged with its traceback and the task is started again after an
  exponential backoff (doubling from `initial_backoff_s`, capped at `max_backoff_s`; reset after
  the task has run for `stable_after_s` without failing). For loops that hold no state a restart
  could corrupt: broadcasters, probes, pingers.
- `exit`: the exception is logged and the service is made to exit non-zero, so its process
  supervisor (Kubernetes, docker-compose, `make run`) restarts it. For tasks whose death leaves
  the service unable to do its job in a way a restart in process cannot safely repair (the
  scheduler's executor: its standby takes the lane).

Exiting is done cleanly: `request_exit` records the exit status and sends the process SIGTERM,
which aiohttp's runner turns into its graceful shutdown (cleanup contexts run, the broker
connection closes, unacked jobs go back to the queue); `run_service` then exits with the
recorded status. In-process tests inject their own `on_exit` instead.

Cancellation (shutdown) is not a failure: a cancelled task is never restarted or reported.

A periodic task (a sweep, a purge) runs its round under `every`: an error of a dependency that
is away for now only skips the round, and anything else fails the task for its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from corral_common.redaction import redact_secrets

log = structlog.get_logger(__name__)

OnFailure = Literal["restart", "exit"]
# The exit status of a service that a supervised task failed (EX_SOFTWARE).
FAILED_EXIT_CODE = 70

# The status `run_service` exits with once aiohttp's runner has stopped; None = a normal stop.
_requested_exit: int | None = None


def request_exit(code: int = FAILED_EXIT_CODE, reason: str = "") -> None:
    """Stop this service gracefully and make its process exit with `code` (non-zero).

    Sends the process SIGTERM: under aiohttp's `run_app` that is a graceful shutdown, after
    which `run_service` exits with `code`. Without run_app's handler, SIGTERM's default action
    ends the process, still with a non-zero status."""
    global _requested_exit
    if _requested_exit is not None:
        return  # already on its way out; a second SIGTERM would interrupt the graceful stop
    _requested_exit = code
    log.error("service exiting to be restarted", exit_code=code, reason=reason)
    signal.raise_signal(signal.SIGTERM)


def requested_exit_code() -> int | None:
    """The exit status asked for by `request_exit`, if any."""
    return _requested_exit


@dataclass(frozen=True)
class Task:
    """One supervised task: `run` makes a fresh coroutine each time it is (re)started."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    on_failure: OnFailure = "restart"
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    # A run this long without failing resets the backoff to its initial value.
    stable_after_s: float = 60.0


Sleeper = Callable[[float], Awaitable[None]]
ExitHook = Callable[[int, str], None]


async def supervise(
    task: Task,
    *,
    on_exit: ExitHook = request_exit,
    sleep: Sleeper = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run `task` until it is cancelled, restarting it or exiting the service when it fails."""
    backoff = task.initial_backoff_s
    restarts = 0
    while True:
        started = clock()
        try:
            await task.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            failure = "raised"
            # The traceback is the point: `log.exception` records it with the task's name.
            log.exception("background task failed", task=task.name, restarts=restarts)
        else:
            failure = "returned"
            log.error("background task returned unexpectedly", task=task.name)
        if task.on_failure == "exit":
            on_exit(FAILED_EXIT_CODE, f"background task {task.name!r} {failure}")
            return
        if clock() - started >= task.stable_after_s:
            backoff = task.initial_backoff_s
        log.warning("restarting background task", task=task.name, backoff_s=round(backoff, 3))
        await sleep(backoff)
        backoff = min(backoff * 2, task.max_backoff_s)
        restarts += 1


@contextlib.asynccontextmanager
async def supervised(
    *tasks: Task,
    on_exit: ExitHook = request_exit,
    sleep: Sleeper = asyncio.sleep,
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start each task under `supervise`; on leaving, cancel them all and wait for them.

    Made for cleanup contexts:

        async def lane_ctx(app):
            async with supervised(Task("executor", executor.run_forever, on_failure="exit")):
                yield
    """
    running = [
        asyncio.create_task(supervise(task, on_exit=on_exit, sleep=sleep), name=task.name)
        for task in tasks
    ]
    try:
        yield running
    finally:
        await stop(running)


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to end; an exception on the way out is logged."""
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error(
                "background task failed while stopping",
                task=task.get_name(),
                exc_info=result,
            )


async def every(
    interval_s: float,
    work: Callable[[], Awaitable[object]],
    *,
    skip_on: tuple[type[Exception], ...],
    skipped: str,
    sleep: Sleeper = asyncio.sleep,
) -> None:
    """Run `work` now and then every `interval_s`, forever: the body of a periodic task. An
    exception of `skip_on` (a database or backend that is away for now) is logged, as `skipped`,
    and only skips that round; any other fails the task, which its supervisor handles."""
    while True:
        try:
            await work()
        except skip_on as exc:
            # Driver errors can carry a connection URL with its password.
            log.warning(skipped, error=redact_secrets(str(exc)))
        await sleep(interval_s)


def spawn(
    coro: Coroutine[Any, Any, None],
    *,
    name: str,
    keep: set[asyncio.Task[None]] | None = None,
) -> asyncio.Task[None]:
    """Start a short-lived task that nobody awaits (a cancel published after a client left, a
    pull running on after its caller went): its failure is logged, never lost, and `keep` holds
    it (so it is not garbage-collected mid-run, and shutdown can wait for it) until it ends."""
    task = asyncio.create_task(coro, name=name)
    if keep is not None:
        keep.add(task)
        task.add_done_callback(keep.discard)
    task.add_done_callback(log_failure)
    return task


def log_failure(task: asyncio.Task[Any]) -> None:
    """A done-callback for short-lived spawned tasks: their exception is logged, not lost."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("spawned task failed", task=task.get_name(), exc_info=exc)
