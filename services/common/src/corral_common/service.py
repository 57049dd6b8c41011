"""Running a service process: logging, tracing, then aiohttp's own runner with graceful stop."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from corral_common.gc_pauses import collector_ctx, watch_gc_pauses
from corral_common.logging import configure_logging
from corral_common.serving import RunnerFactory, raise_open_file_limit, serve
from corral_common.settings import CorralSettings
from corral_common.supervision import requested_exit_code
from corral_common.telemetry import setup_tracing

S = TypeVar("S", bound=CorralSettings)


def run_service(
    service: str,
    create_app: Callable[[S], web.Application],
    settings: S,
    *,
    http_server_spans: bool = False,
    http_client_spans: bool = False,
    runner_factory: RunnerFactory | None = None,
) -> None:
    """Runs the service until SIGINT/SIGTERM; `runner_factory` replaces aiohttp's plain
    AppRunner (the gateway's counts and times its connections)."""
    configure_logging(
        service,
        settings.log_level,
        burst=settings.log_burst,
        burst_interval_s=settings.log_burst_interval_s,
    )
    raise_open_file_limit()
    watch_gc_pauses()
    setup_tracing(service, http_server=http_server_spans, http_client=http_client_spans)
    host, port = settings.listen_address()
    app = create_app(settings)
    app.cleanup_ctx.append(collector_ctx(settings.gc_full_interval_s))
    # handler_cancellation: a client that disconnects cancels its handler, which is how a
    # queued or running request learns its client has gone.
    if runner_factory is not None:
        serve(
            app,
            host,
            port,
            runner_factory,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=10.0,
        )
    else:
        web.run_app(
            app,
            host=host,
            port=port,
            handler_cancellation=True,
            access_log=None,
            print=None,
            shutdown_timeout=10.0,
        )
    # A supervised task that failed (or the scheduler's watchdog) stopped the service on
    # purpose: exit non-zero so the process supervisor restarts it.
    code = requested_exit_code()
    if code is not None:
        sys.exit(code)
