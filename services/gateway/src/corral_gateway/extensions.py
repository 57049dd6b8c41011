"""Corral's extension fields: where they are read from, and stripping them before the backend.

The official Python client rejects unknown keyword arguments, so a session id may also come in
the `X-Session-Id` header (client-wide headers) or as `options.session_id`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import InvalidId, check_client_id, new_id
from corral_common.messages import PRIORITIES, Priority
from corral_gateway.identity.principal import caller_of
from corral_gateway.request_terms import BODY_TERMS, OPTION_TERMS, RequestTerms, read_terms
from corral_gateway.session_fields import (
    BODY_FIELDS,
    OPTION_FIELDS,
    SessionFields,
    read_session_fields,
    resolve_session_id,
)
from corral_gateway.validation import OllamaRequestError

# Fields that only Corral understands; never forwarded to the backend.
BODY_EXTENSIONS = ("session_id", "request_id", "priority", *BODY_TERMS, *BODY_FIELDS)
# The same, where the official client can carry them (inside `options`).
OPTION_EXTENSIONS = ("session_id", "queue_timeout", "priority", *OPTION_TERMS, *OPTION_FIELDS)
# `stream` is decided by the scheduler (always streams from the backend).
NOT_FORWARDED = (*BODY_EXTENSIONS, "stream")


@dataclass(frozen=True)
class Extensions:
    request_id: str
    session_id: str | None
    queue_progress: bool
    # The queue's fair-share key: the caller's principal (auth on), else `X-Client-Id`.
    client_key: str | None
    priority: Priority = "normal"
    # Whose request it is (the caller's principal; None with auth off).
    owner: str | None = None
    # The caller's key's cap on its queued requests (None: the scheduler's default).
    max_queued: int | None = None
    # Longest wait in the queue before the request is answered 408 (None: no limit).
    queue_timeout_s: float | None = None
    arrived_at: float = field(default_factory=time.time)
    # Its own total deadline and retry terms (request_terms.py).
    terms: RequestTerms = field(default_factory=RequestTerms)
    # Its session's history cap and the metadata kept with its turn (session_fields.py); and
    # whether Corral made up `session_id` (the client asked for "new").
    session: SessionFields = field(default_factory=SessionFields)
    session_created: bool = False

    def deadline(self) -> float | None:
        """Epoch seconds after which the request must not start: its queue timeout, or its
        total deadline if that comes first."""
        deadlines = [self.finish_by()]
        if self.queue_timeout_s is not None:
            deadlines.append(self.arrived_at + self.queue_timeout_s)
        return min((d for d in deadlines if d is not None), default=None)

    def finish_by(self) -> float | None:
        """Epoch seconds by which the request must be answered (None: no limit)."""
        return self.terms.finish_by


@dataclass(frozen=True)
class QueueLimits:
    """The gateway's queue-timeout policy: a default, and a cap on what clients may ask."""

    default_s: float | None
    max_s: float | None


def read_extensions(
    request: web.Request, body: dict[str, Any], limits: QueueLimits | None = None
) -> Extensions:
    """Corral's fields of a job request, and who asks: the caller's principal owns the job,
    its fair-share key takes turns in the queue, its key's `max_queued` caps what it may have
    queued, and the priority asked for is clamped to its key's `max_priority`
    (`clamp_priority`: asking above the maximum gets the maximum, not an error)."""
    caller = caller_of(request)
    raw_options = body.get("options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    session_id = _first(
        body.get("session_id"), request.headers.get("X-Session-Id"), options.get("session_id")
    )
    request_id = _first(body.get("request_id"), request.headers.get("X-Request-Id"))
    client_key = caller.fair_share_key
    checked = [("session_id", session_id), ("request_id", request_id)]
    if caller.key_id is None:
        # `X-Client-Id` travels in every job and lane snapshot: the same rule bounds it (a
        # key's principal is bounded by the key store).
        checked.append(("X-Client-Id", client_key))
    for name, value in checked:
        if value is not None:
            try:
                check_client_id(value, name)
            except InvalidId as exc:
                raise OllamaRequestError(400, exc.message) from exc
    session_id, session_created = resolve_session_id(session_id)
    priority = _first(
        body.get("priority"), request.headers.get("X-Priority"), options.get("priority")
    )
    if priority is not None and priority not in PRIORITIES:
        raise OllamaRequestError(
            400, f"invalid priority {clip(priority)!r}: use one of {', '.join(PRIORITIES)}"
        )
    return Extensions(
        request_id=request_id or new_id(),
        session_id=session_id,
        queue_progress=request.headers.get("X-Queue-Progress", "1").strip() != "0",
        client_key=client_key,
        priority=clamp_priority(priority or "normal", caller.max_priority),
        owner=caller.principal,
        max_queued=caller.limits.max_queued,
        queue_timeout_s=_queue_timeout(
            request.headers.get("X-Queue-Timeout"), options.get("queue_timeout"), limits
        ),
        terms=read_terms(request, body, options),
        session=read_session_fields(body, options),
        session_created=session_created,
    )


def clamp_priority(asked: Priority, maximum: Priority | None) -> Priority:
    """`asked`, or `maximum` when `asked` ranks above it (interactive > normal > batch): a key
    limited to "normal" asking for "interactive" runs at "normal". No maximum: as asked."""
    if maximum is not None and PRIORITIES.index(asked) < PRIORITIES.index(maximum):
        return maximum
    return asked


def _queue_timeout(header: str | None, option: Any, limits: QueueLimits | None) -> float | None:
    """Seconds from `X-Queue-Timeout` or `options.queue_timeout`, else the default; capped."""
    limits = limits or QueueLimits(None, None)
    asked: float | None = None
    raw = header if header is not None else option
    if raw is not None:
        try:
            asked = float(raw)
        except (TypeError, ValueError):
            asked = None
        if isinstance(raw, bool) or asked is None or not math.isfinite(asked) or asked <= 0:
            raise OllamaRequestError(
                400, f"invalid queue timeout {clip(repr(raw))}: give a positive number of seconds"
            )
    timeout = asked if asked is not None else limits.default_s
    if timeout is not None and limits.max_s is not None:
        timeout = min(timeout, limits.max_s)
    return timeout


def backend_payload(body: dict[str, Any]) -> dict[str, Any]:
    payload = {key: value for key, value in body.items() if key not in NOT_FORWARDED}
    options = payload.get("options")
    if isinstance(options, dict) and any(key in options for key in OPTION_EXTENSIONS):
        payload["options"] = {k: v for k, v in options.items() if k not in OPTION_EXTENSIONS}
    return payload


def _first(*values: Any) -> str | None:
    for value in values:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise OllamaRequestError(
                400, "Corral's fields session_id, request_id and priority must be strings"
            )
        return value
    return None


def header_request_id(request: web.Request) -> str:
    """The request id from `X-Request-Id` (InvalidId if it breaks the rule), else a new one."""
    raw = request.headers.get("X-Request-Id")
    return new_id() if raw is None or raw == "" else check_client_id(raw, "request_id")


def invalid_id_error(exc: InvalidId) -> CorralError:
    """A bad id as Corral's own endpoints report it."""
    return CorralError(ErrorType.INVALID_REQUEST, exc.message, details={"field": exc.field})
