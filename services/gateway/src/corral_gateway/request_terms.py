"""A request's own terms: its total deadline and how the lane may
retry a backend that is not ready for it.

- `timeout_ms` (body, milliseconds), `X-Request-Timeout` (header, seconds, for clients that
  cannot add fields: the official Python client takes headers client-wide) or
  `options.timeout` (seconds, where that client can carry it): the request must be answered
  within this from its arrival, queue and generation together. Past it in the queue: 408
  `queue_timeout`, as a queue timeout is; past it while running: the generation is stopped and
  the answer is 504 `backend_timeout` (docs/request-path.md).
- `max_retries` and `retry_backoff` (seconds; body or options): the lane's retries of a
  backend that refuses or is busy before answering, bounded by the scheduler's settings.

All are Corral's: stripped before the request reaches the backend (extensions.py). A value
that is not a number of the right kind is refused with 400 in the surface's shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_common.clip import clip
from corral_common.messages import Job
from corral_gateway.validation import OllamaRequestError

TIMEOUT_HEADER = "X-Request-Timeout"
# Corral's fields in the body and in `options`, never forwarded to the backend.
BODY_TERMS = ("timeout_ms", "max_retries", "retry_backoff")
OPTION_TERMS = ("timeout", "max_retries", "retry_backoff")


@dataclass(frozen=True)
class RequestTerms:
    # Epoch seconds by which the request must be answered, queue and generation together: its
    # arrival plus its timeout (None: no limit).
    finish_by: float | None = None
    # The request's own retry terms (None: the scheduler's settings).
    max_retries: int | None = None
    retry_backoff_s: float | None = None

    def stamp(self, job: Job) -> Job:
        """`job` carrying these terms to the lane (its queue deadline no later than the total
        one: a job that cannot finish in time must not start)."""
        finish_by = self.finish_by
        update: dict[str, Any] = {
            "finish_by": finish_by,
            "max_retries": self.max_retries,
            "retry_backoff_s": self.retry_backoff_s,
        }
        if finish_by is not None and (job.deadline is None or job.deadline > finish_by):
            update["deadline"] = finish_by
        return job.model_copy(update=update)


def read_terms(
    request: web.Request,
    body: dict[str, Any],
    options: dict[str, Any],
    arrived_at: float | None = None,
) -> RequestTerms:
    """The request's terms from its body, headers and options (the first given wins, in that
    order), its deadline counted from `arrived_at` (default: now); 400 for a value that cannot
    be one."""
    timeout_s: float | None = None
    if body.get("timeout_ms") is not None:
        timeout_s = _positive(body["timeout_ms"], "timeout_ms", "milliseconds") / 1000
    elif request.headers.get(TIMEOUT_HEADER) is not None:
        timeout_s = _positive(request.headers[TIMEOUT_HEADER], TIMEOUT_HEADER, "seconds", text=True)
    elif options.get("timeout") is not None:
        timeout_s = _positive(options["timeout"], "options.timeout", "seconds")
    retries = _given(body, options, "max_retries")
    backoff = _given(body, options, "retry_backoff")
    start = time.time() if arrived_at is None else arrived_at
    return RequestTerms(
        finish_by=None if timeout_s is None else start + timeout_s,
        max_retries=None if retries is None else _count(retries),
        retry_backoff_s=None if backoff is None else _seconds(backoff),
    )


def _given(body: dict[str, Any], options: dict[str, Any], name: str) -> Any:
    return body[name] if body.get(name) is not None else options.get(name)


def _number(raw: Any, text: bool = False) -> float | None:
    """A JSON number (or, with `text`, a header's text of one); None otherwise."""
    if isinstance(raw, bool):
        return None
    if text and isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    return float(raw)


def _positive(raw: Any, name: str, unit: str, *, text: bool = False) -> float:
    value = _number(raw, text)
    if value is None or value <= 0:
        raise OllamaRequestError(
            400, f"invalid {name} {clip(repr(raw))}: give a positive number of {unit}"
        )
    return value


def _count(raw: Any) -> int:
    value = _number(raw)
    if value is None or value < 0 or value != int(value):
        raise OllamaRequestError(
            400, f"invalid max_retries {clip(repr(raw))}: give a whole number, 0 or more"
        )
    return int(value)


def _seconds(raw: Any) -> float:
    value = _number(raw)
    if value is None or value < 0:
        raise OllamaRequestError(
            400, f"invalid retry_backoff {clip(repr(raw))}: give a number of seconds, 0 or more"
        )
    return value
