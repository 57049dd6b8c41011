"""Serving an app with a runner of the service's own choosing, and the process's file limit.

`web.run_app` always builds a plain `web.AppRunner`, so a service whose connections need a
custom protocol (the gateway counts and times its connections, see
corral_gateway.connections) cannot use it. `serve` is run_app's lifecycle for one TCP
listener, with the runner made by a factory: the runner handles SIGINT/SIGTERM (raising
`GracefulExit`), startup and cleanup run as with run_app, and leftover tasks are cancelled
before the loop closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

RunnerFactory = Callable[..., web.AppRunner]


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    Every client connection is a file descriptor; distributions start processes with a soft
    limit of 1024 while allowing far more. Hitting it makes accept() fail, and asyncio then
    stops accepting for a second at a time: every new client hangs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            # macOS refuses RLIM_INFINITY (and anything above kern.maxfilesperproc).
            with contextlib.suppress(ValueError, OSError):
                target = min(hard, 1 << 20)
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE, or None when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


async def _serve(
    app: web.Application,
    host: str,
    port: int,
    runner_factory: RunnerFactory,
    shutdown_timeout: float,
    backlog: int,
    runner_kwargs: dict[str, Any],
) -> None:
    runner = runner_factory(
        app, handle_signals=True, shutdown_timeout=shutdown_timeout, **runner_kwargs
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=backlog)
        await site.start()
        # Until SIGINT/SIGTERM: the runner's handlers raise GracefulExit out of the loop.
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(
    app: web.Application,
    host: str,
    port: int,
    runner_factory: RunnerFactory,
    *,
    shutdown_timeout: float = 10.0,
    # aiohttp's 128 overflows when thousands of clients arrive at once (each overflow is a TCP
    # retry, about a second, before the request is even read); the kernel caps it at somaxconn.
    backlog: int = 1024,
    **runner_kwargs: Any,
) -> None:
    """Run `app` on `host:port` until SIGINT/SIGTERM, as `web.run_app` does."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(
        _serve(app, host, port, runner_factory, shutdown_timeout, backlog, runner_kwargs)
    )
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                # Runs `runner.cleanup()` (graceful shutdown, cleanup contexts).
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)
