"""OpenTelemetry set-up and trace-context propagation through AMQP headers.

Exporting is configured by the standard `OTEL_*` variables: with `OTEL_EXPORTER_OTLP_ENDPOINT`
(or `OTEL_TRACES_EXPORTER=otlp|console`) spans are exported, over OTLP/HTTP to the endpoint.

Without an exporter, tracing is off and costs nothing: no SDK tracer provider is installed (the
API's default hands out non-recording spans, which are nearly free), aiohttp is not instrumented,
and no trace context is written into or read from messages (there is none to carry). Spans made
with nowhere to send them cost about a tenth of the gateway's and the scheduler's CPU (measured
by bench/tracing_overhead.py); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns
tracing off even with an endpoint. A trace context a client sends is then not carried past the
gateway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

_configured = False
TRACEPARENT = "traceparent"


def setup_tracing(service: str, *, http_server: bool = False, http_client: bool = False) -> None:
    """With an exporter configured, install the tracer provider exporting to it (flushed at
    exit), and the contrib instrumentations the service asks for: they patch aiohttp globally,
    so this runs before any app or client session exists. Without one, nothing at all (see the
    module doc)."""
    global _configured
    if _configured:
        return
    _configured = True
    exporter = _exporter_from_env()
    if exporter is None:
        return
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", f"corral-{service}")}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # Probes and scrapes would drown the traces that matter.
    os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", "/health,/ready,/metrics")
    _never_capture_credentials()
    if http_server:
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        AioHttpServerInstrumentor().instrument()
    if http_client:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

        AioHttpClientInstrumentor().instrument()


# Header values OpenTelemetry must mask if an operator turns on header capture
# (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*): API keys and cookies never reach a trace.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "proxy-authorization", "cookie", "set-cookie")
SANITIZE_ENV = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS"


def _never_capture_credentials() -> None:
    """Add the credential headers to the sanitize list, keeping what the operator set."""
    configured = [f.strip() for f in os.environ.get(SANITIZE_ENV, "").split(",") if f.strip()]
    missing = [h for h in CREDENTIAL_HEADERS if h not in {f.lower() for f in configured}]
    os.environ[SANITIZE_ENV] = ",".join([*configured, *missing])


def tracing_configured() -> bool:
    """Whether the environment asks for spans to be exported (see `_exporter_from_env`)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if choice in ("", "otlp"):
        return choice == "otlp" or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return choice == "console"


def _exporter_from_env() -> SpanExporter | None:
    if not tracing_configured():
        return None
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if choice == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer() -> trace.Tracer:
    return trace.get_tracer("corral")


def inject_context(headers: dict[str, Any]) -> None:
    """Write the current trace context (W3C traceparent) into AMQP headers; nothing when no
    span is recording or carried (tracing off: the common case, kept cheap)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return
    propagate.inject(headers)


EMPTY_CONTEXT = otel_context.Context()


def extract_context(headers: Mapping[str, Any] | None) -> otel_context.Context:
    """The trace context carried in AMQP headers; an empty one when they carry none."""
    if not headers or TRACEPARENT not in headers:
        return EMPTY_CONTEXT
    carrier = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items()}
    return propagate.extract(carrier)


def current_trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")
