"""structlog JSON logs: one event per line with `service`, bound ids and the current trace id.

Request ids and session ids are bound with `structlog.contextvars.bound_contextvars`; prompts
and keys are never passed to a logger. Credentials in URLs (`user:password@`), Corral API keys
(`crl_...`, down to their display prefix), `Bearer` tokens and `X-API-Key` values are masked in
every string an event carries, tracebacks included (`redact_event`), whatever logged it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from corral_common.clip import CLIP_CHARS, clip
from corral_common.log_limits import RateLimitFilter, RateLimitProcessor, RepeatLimiter
from corral_common.redaction import redact_secrets
from corral_common.telemetry import current_trace_id


def _add_trace_id(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    trace_id = current_trace_id()
    if trace_id is not None:
        event.setdefault("trace_id", trace_id)
    return event


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if isinstance(value, BaseException):
        # Rendered later from its message: mask that now, keeping the type's name.
        text = str(value)
        masked = redact_secrets(text)
        return value if masked == text else f"{type(value).__name__}: {masked}"
    return value


def redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Mask credentials in every value of the event (see corral_common.redaction)."""
    return {
        key: value if key in ("exc_info", "_record", "_from_structlog") else _redacted(value)
        for key, value in event.items()
    }


# Fields that carry what a client chose (a model name, an id) are clipped like error texts; any
# other string is capped too, so no request can write megabytes into a log line. The rendered
# traceback is left whole: it is ours, and the point of logging it.
CLIENT_FIELDS = frozenset({"model", "name", "request_id", "session_id", "client_key", "path"})
FIELD_CHARS = 2048
WHOLE_FIELDS = frozenset({"exception", "exc_info", "_record", "_from_structlog"})


def clip_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and key not in WHOLE_FIELDS:
            event[key] = clip(value, CLIP_CHARS if key in CLIENT_FIELDS else FIELD_CHARS)
    return event


def configure_logging(
    service: str, level: str = "info", *, burst: int = 50, burst_interval_s: float = 10.0
) -> None:
    """`burst` lines per event and level per `burst_interval_s`, the rest summarised (see
    corral_common.log_limits); `burst=0` lets everything through."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    limiter = RepeatLimiter(burst, burst_interval_s)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        lambda _, __, event: {"service": service, **event},
        _add_trace_id,
    ]
    structlog.configure(
        processors=[
            *shared,
            # Before the costly steps: a dropped repeat is never formatted or rendered.
            RateLimitProcessor(limiter),
            structlog.processors.format_exc_info,
            clip_event,
            # After format_exc_info, so the rendered traceback is masked too.
            redact_event,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
    # Libraries (aio-pika, aiohttp) log through the standard library: render those as JSON too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                clip_event,
                redact_event,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    handler.addFilter(RateLimitFilter(limiter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
