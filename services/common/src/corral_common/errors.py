"""Corral's error types and the two body shapes clients expect.

Native Ollama paths answer `{"error": "<text>"}` so Ollama clients parse them; Corral-only
endpoints answer `{"error": {"type", "message", "details"}}`, plus `retry_after` (whole seconds)
whenever the client is told when to come back (a `Retry-After` header, or `retry_after_s` in the
details): the header and the body always say the same.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from corral_common.clip import clip


class ErrorType(StrEnum):
    MODEL_NOT_FOUND = "model_not_found"
    SESSION_NOT_FOUND = "session_not_found"
    REQUEST_NOT_FOUND = "request_not_found"
    INVALID_REQUEST = "invalid_request"
    OLLAMA_CONNECTION_ERROR = "ollama_connection_error"
    QUEUE_TIMEOUT = "queue_timeout"
    CONTEXT_LIMIT_EXCEEDED = "context_limit_exceeded"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    QUEUE_FULL = "queue_full"
    BROKER_UNAVAILABLE = "broker_unavailable"
    BACKEND_ERROR = "backend_error"
    BACKEND_TIMEOUT = "backend_timeout"
    MODEL_BUSY = "model_busy"
    REQUEST_IN_FLIGHT = "request_in_flight"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    KEY_NOT_FOUND = "key_not_found"
    INTERRUPTED = "interrupted"
    INTERNAL_ERROR = "internal_error"


STATUS_OF: dict[ErrorType, int] = {
    ErrorType.MODEL_NOT_FOUND: 404,
    ErrorType.SESSION_NOT_FOUND: 404,
    ErrorType.REQUEST_NOT_FOUND: 404,
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.OLLAMA_CONNECTION_ERROR: 503,
    ErrorType.QUEUE_TIMEOUT: 408,
    ErrorType.CONTEXT_LIMIT_EXCEEDED: 413,
    ErrorType.RATE_LIMIT_EXCEEDED: 429,
    ErrorType.QUEUE_FULL: 503,
    ErrorType.BROKER_UNAVAILABLE: 503,
    ErrorType.BACKEND_ERROR: 500,
    ErrorType.BACKEND_TIMEOUT: 504,
    ErrorType.MODEL_BUSY: 409,
    ErrorType.REQUEST_IN_FLIGHT: 409,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.KEY_NOT_FOUND: 404,
    ErrorType.INTERRUPTED: 500,
    ErrorType.INTERNAL_ERROR: 500,
}


class CorralError(Exception):
    """An error with a type, an HTTP status and details a client can act on."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status if status is not None else STATUS_OF[error_type]
        self.details = details or {}
        self.headers = headers or {}

    def ollama_body(self) -> dict[str, Any]:
        # Ollama clients read only `error` (a string); a model_not_found also says which
        # models exist, in fields those clients ignore.
        if self.error_type is ErrorType.MODEL_NOT_FOUND and self.details:
            return {"error": self.message, "type": str(self.error_type), "details": self.details}
        return {"error": self.message}

    @property
    def retry_after_s(self) -> int | None:
        """When the client should retry, in whole seconds: the `Retry-After` header's value when
        one is set, else the details' `retry_after_s`; None when this error says nothing."""
        return retry_after_seconds(
            self.headers.get("Retry-After", self.details.get("retry_after_s"))
        )

    def response_headers(self) -> dict[str, str]:
        """The headers to answer with: this error's own, with `Retry-After` whenever the body
        carries `retry_after`."""
        retry_after = self.retry_after_s
        if retry_after is None or "Retry-After" in self.headers:
            return dict(self.headers)
        return {**self.headers, "Retry-After": str(retry_after)}

    def corral_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": str(self.error_type),
            "message": self.message,
            "details": self.details,
        }
        retry_after = self.retry_after_s
        if retry_after is not None:
            error["retry_after"] = retry_after
        return {"error": error}


def retry_after_seconds(value: Any) -> int | None:
    """A Retry-After value (delay seconds, as a number or its text) in whole seconds, rounded
    up; None for anything else (an HTTP date is not a delay a body can carry as a number)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return math.ceil(value)


def backend_unreachable_message(ollama_url: str, server: str = "Ollama") -> str:
    """Ollama's own words for a server that is not there (clients match on them); `server`
    names another kind of server (an OpenAI-compatible one) in the same words."""
    return f"Cannot connect to {server} server. Please ensure {server} is running on {ollama_url}"


def in_flight_error(request_id: str) -> CorralError:
    """A second request with the id of one still in flight: a conflict, not a malformed request
    (a client retrying after its own timeout with the same `X-Request-Id` gets this while its
    first request is still being answered or cancelled). Said by a gateway of its own requests,
    and by the scheduler of a job whose id another gateway's job holds in the lane. Ollama
    ignores the header, so the text says what to do."""
    return CorralError(
        ErrorType.REQUEST_IN_FLIGHT,
        f"request id '{clip(request_id)}' is already in flight; use a new X-Request-Id",
    )
