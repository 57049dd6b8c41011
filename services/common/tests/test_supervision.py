"""The supervisor, in process: restart with capped backoff, the exit path, cancellation, and the
traceback in the log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from structlog.testing import capture_logs

from corral_common.supervision import FAILED_EXIT_CODE, Task, spawn, supervise, supervised


class Boom(RuntimeError):
    pass


async def test_a_failing_task_is_restarted_with_capped_exponential_backoff() -> None:
    runs = 0
    sleeps: list[float] = []
    done = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 6:
            done.set()
            await asyncio.Event().wait()  # healthy from now on
        raise Boom(f"run {runs}")

    async def sleeper(seconds: float) -> None:
        sleeps.append(seconds)

    exits: list[int] = []
    task = Task("flaky", flaky, initial_backoff_s=1.0, max_backoff_s=4.0)
    async with supervised(task, on_exit=lambda code, _: exits.append(code), sleep=sleeper):
        await done.wait()
    assert runs == 6
    assert sleeps == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert exits == []


async def test_the_traceback_is_logged_with_the_task_name() -> None:
    failed = asyncio.Event()

    async def broken() -> None:
        failed.set()
        raise Boom("kaput")

    async def sleeper(_: float) -> None:
        await asyncio.Event().wait()  # stay in the backoff; the test looks at the first failure

    with capture_logs() as logs:
        async with supervised(Task("broken", broken), sleep=sleeper):
            # The failure is logged in the same step that raised, before the backoff yields.
            await failed.wait()
    failures = [e for e in logs if e["event"] == "background task failed"]
    assert len(failures) == 1
    assert failures[0]["task"] == "broken"
    assert failures[0]["log_level"] == "error"
    assert failures[0].get("exc_info") is True  # log.exception: the traceback goes with it


async def test_an_exit_task_stops_the_service_instead_of_restarting() -> None:
    exits: list[tuple[int, str]] = []
    runs = 0

    async def lane() -> None:
        nonlocal runs
        runs += 1
        raise Boom("lane broke")

    await supervise(
        Task("lane", lane, on_failure="exit"), on_exit=lambda c, r: exits.append((c, r))
    )
    assert runs == 1
    assert exits == [(FAILED_EXIT_CODE, "background task 'lane' raised")]
    assert FAILED_EXIT_CODE != 0


async def test_a_task_that_returns_counts_as_failed() -> None:
    exits: list[int] = []

    async def quits() -> None:
        return

    await supervise(Task("quits", quits, on_failure="exit"), on_exit=lambda c, _: exits.append(c))
    assert exits == [FAILED_EXIT_CODE]


async def test_cancellation_is_shutdown_not_failure() -> None:
    started = asyncio.Event()
    cancelled = False

    async def forever() -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    exits: list[int] = []
    with capture_logs() as logs:
        async with supervised(
            Task("forever", forever, on_failure="exit"), on_exit=lambda c, _: exits.append(c)
        ) as tasks:
            await started.wait()
    assert cancelled
    assert all(t.done() for t in tasks)
    assert exits == []
    assert not [e for e in logs if e["log_level"] in ("error", "warning")]


@pytest.mark.timeout(60)
def test_request_exit_makes_the_aiohttp_service_exit_non_zero() -> None:
    """The real exit path: a supervised task fails inside `run_service`, aiohttp shuts down
    gracefully (cleanup contexts run) and the process exits with FAILED_EXIT_CODE."""
    script = textwrap.dedent(
        """
        import asyncio
        from aiohttp import web
        from corral_common.service import run_service
        from corral_common.settings import CorralSettings
        from corral_common.supervision import Task, supervised

        class Settings(CorralSettings):
            health_port: int = 0

        started = asyncio.Event()

        async def broken():
            await started.wait()  # fail once the service is up, as a lane would
            raise RuntimeError("the lane broke")

        async def on_startup(app):
            started.set()

        async def ctx(app):
            async with supervised(Task("lane", broken, on_failure="exit")):
                yield
            print("cleaned up", flush=True)

        def create_app(settings):
            app = web.Application()
            app.cleanup_ctx.append(ctx)
            app.on_startup.append(on_startup)
            return app

        run_service("probe", create_app, Settings())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=False
    )
    assert result.returncode == FAILED_EXIT_CODE, result.stderr[-2000:]
    assert "cleaned up" in result.stdout
    assert "the lane broke" in result.stderr  # the traceback, logged


async def test_a_spawned_task_is_kept_until_it_ends_and_its_failure_logged() -> None:
    keep: set[asyncio.Task[None]] = set()
    release = asyncio.Event()

    async def short_lived() -> None:
        await release.wait()
        raise Boom("nobody awaits me")

    with capture_logs() as logs:
        task = spawn(short_lived(), name="cancel-publish", keep=keep)
        assert keep == {task}
        release.set()
        await asyncio.wait([task])
    assert keep == set()
    failures = [e for e in logs if e["event"] == "spawned task failed"]
    assert [f["task"] for f in failures] == ["cancel-publish"]
