"""Corral's error types (the seed API's table) and the two body shapes clients expect.

Native Ollama paths answer `{"error": "<text>"}` so Ollama clients parse them; Corral-only
endpoints answer `{"error": {"type", "message", "details"}}`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


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

    def corral_body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": str(self.error_type),
                "message": self.message,
                "details": self.details,
            }
        }


def backend_unreachable_message(ollama_url: str) -> str:
    return f"Cannot connect to Ollama server. Please ensure Ollama is running on {ollama_url}"
