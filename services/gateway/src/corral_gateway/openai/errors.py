"""Corral's failures in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

`type` follows Ollama's rule (`openai.NewError`): `invalid_request_error` for 400,
`not_found_error` for 404, `api_error` for anything else, so a client that handles Ollama's `/v1`
handles Corral's. Ollama leaves `code` null; Corral fills it with the reason, because the OpenAI
SDKs surface `code` and OpenAI's own API uses it for exactly these cases: OpenAI's name where
OpenAI has one (`model_not_found`, `context_length_exceeded`, `rate_limit_exceeded`,
`invalid_api_key` for a 401), Corral's error type otherwise, and null for a plain request
validation error (as Ollama).

Statuses are the native surface's, except a context that does not fit, which OpenAI (and so every
OpenAI client) reports as 400 `context_length_exceeded` where Corral's native surface says 413.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral_common import jsonutil
from corral_common.errors import CorralError, ErrorType

# Where OpenAI's API has its own code for a failure, clients match on that one.
_OPENAI_CODES: dict[ErrorType, str] = {
    ErrorType.MODEL_NOT_FOUND: "model_not_found",
    ErrorType.CONTEXT_LIMIT_EXCEEDED: "context_length_exceeded",
    ErrorType.RATE_LIMIT_EXCEEDED: "rate_limit_exceeded",
    ErrorType.UNAUTHORIZED: "invalid_api_key",
}
# Plain validation errors carry no code, as in Ollama's answers.
_NO_CODE = frozenset({ErrorType.INVALID_REQUEST})
# OpenAI says 400 for a prompt over the context window; Corral's native surface says 413.
_OPENAI_STATUSES: dict[ErrorType, int] = {ErrorType.CONTEXT_LIMIT_EXCEEDED: 400}
# Statuses after which a client should come back later; the OpenAI SDKs retry these and honour
# Retry-After, so one is always sent (Corral's estimate when it has one).
_RETRYABLE = frozenset({408, 429, 503})
DEFAULT_RETRY_AFTER_S = 5


def error_type_for_status(status: int) -> str:
    """OpenAI's error `type` for an HTTP status, as Ollama's `openai.NewError` chooses it."""
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


@dataclass(eq=False)
class OpenAIError(Exception):
    """A failure as the `/v1` surface answers it: status, body and headers."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return error_type_for_status(self.status)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_request(message: str, param: str | None = None) -> OpenAIError:
    """A 400 for a body Ollama's middleware would refuse, with its text."""
    return OpenAIError(400, message, param=param)


def from_corral(exc: CorralError) -> OpenAIError:
    """A typed Corral error (raised before anything was written) in OpenAI's shape."""
    return from_failure(
        exc.status,
        exc.message,
        str(exc.error_type),
        retry_after_s=_retry_after(exc.headers, exc.details),
    )


def from_failure(
    status: int,
    message: str,
    error_type: str | None = None,
    *,
    retry_after_s: int | None = None,
) -> OpenAIError:
    """A failure reported as a status, a message and Corral's error type name (for example a
    scheduler's `Failed` event); an unknown type name keeps its status and gets no code."""
    try:
        known: ErrorType | None = ErrorType(error_type) if error_type is not None else None
    except ValueError:
        known = None
    code: str | None = None
    if known is not None:
        status = _OPENAI_STATUSES.get(known, status)
        if known not in _NO_CODE:
            code = _OPENAI_CODES.get(known, str(known))
    headers: dict[str, str] = {}
    if status in _RETRYABLE:
        headers["Retry-After"] = str(
            retry_after_s if retry_after_s is not None else DEFAULT_RETRY_AFTER_S
        )
    return OpenAIError(status, message, code=code, headers=headers)


def _retry_after(headers: dict[str, str], details: dict[str, Any]) -> int | None:
    raw = headers.get("Retry-After", details.get("retry_after_s"))
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def sse_error_event(error: OpenAIError) -> bytes:
    """A failure after the stream began, when the status line is long gone: an SSE `error`
    event whose data is the error object. The OpenAI SDKs (Python and JS) raise `APIError` for
    any event whose data carries `error` (unless the event name starts with `thread.`), and
    data-only parsers still see the object. The stream then ends without `[DONE]`, which marks
    a completed answer."""
    return b"event: error\ndata: " + jsonutil.dumps(error.body()) + b"\n\n"
