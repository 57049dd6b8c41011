"""Running a service process: logging, tracing, then aiohttp's own runner with graceful stop."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from corral_common.logging import configure_logging
from corral_common.telemetry import setup_tracing


def run_service(
    service: str,
    app_factory: Callable[[], web.Application],
    host: str,
    port: int,
    log_level: str,
    *,
    http_server_spans: bool = False,
    http_client_spans: bool = False,
) -> None:
    configure_logging(service, log_level)
    setup_tracing(service, http_server=http_server_spans, http_client=http_client_spans)
    # handler_cancellation: a client that disconnects cancels its handler, which is how a
    # queued or running request learns its client has gone.
    web.run_app(
        app_factory(),
        host=host,
        port=port,
        handler_cancellation=True,
        access_log=None,
        print=None,
        shutdown_timeout=10.0,
    )
