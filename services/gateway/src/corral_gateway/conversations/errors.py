"""Llama-chat's error shape, for the conversation surface and the conversation stream's last line:

    {"success": false, "error": "<text>", "code": "<CODE>", "details": {...}}

plus what llama-chat puts beside them: `field` on a `VALIDATION_ERROR` (400), `resource` and `id`
on a `NOT_FOUND` (404), and `retry_after` (seconds, as the `Retry-After` header says) on any
error a client should retry later. Codes are llama-chat's where it names one (`VALIDATION_ERROR`,
`NOT_FOUND`; its `LLAMACPP_ERROR` is `BACKEND_ERROR` here, named for what the backend is: Ollama
or any model server), else Corral's error type in capitals (`RATE_LIMIT_EXCEEDED`,
`QUEUE_TIMEOUT`, `UNAUTHORIZED` ...); `details.type` is always Corral's own type, as Corral's
other surfaces name it.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from corral_common.contracts.conversations import conversation_id_of
from corral_common.errors import CorralError, ErrorType
from corral_gateway.responses import json_response
from corral_gateway.surfaces import as_corral_error

_CODES: dict[ErrorType, str] = {
    ErrorType.INVALID_REQUEST: "VALIDATION_ERROR",
    ErrorType.SESSION_NOT_FOUND: "NOT_FOUND",
    ErrorType.MODEL_NOT_FOUND: "NOT_FOUND",
    ErrorType.REQUEST_NOT_FOUND: "NOT_FOUND",
    ErrorType.OLLAMA_CONNECTION_ERROR: "BACKEND_ERROR",
    ErrorType.BACKEND_ERROR: "BACKEND_ERROR",
    ErrorType.BACKEND_TIMEOUT: "BACKEND_ERROR",
}
CONVERSATION_NOT_FOUND = "Conversation not found"


def validation_error(field: str, message: str) -> CorralError:
    """A request llama-chat's validation refuses: 400 `VALIDATION_ERROR` naming its field."""
    return CorralError(ErrorType.INVALID_REQUEST, message, details={"field": field})


def missing_field(field: str) -> CorralError:
    return validation_error(field, f"Missing required field: {field}")


def conversation_not_found(session_id: str) -> CorralError:
    return CorralError(
        ErrorType.SESSION_NOT_FOUND, CONVERSATION_NOT_FOUND, details={"session_id": session_id}
    )


def code_of(error: CorralError) -> str:
    if error.error_type is ErrorType.INVALID_REQUEST and error.status == 413:
        return "PAYLOAD_TOO_LARGE"  # the body is over CORRAL_MAX_BODY_BYTES
    return _CODES.get(error.error_type) or str(error.error_type).upper()


def _field(details: dict[str, Any]) -> str | None:
    """The request field a validation error is about, however the refusing code named it."""
    for key in ("field", "parameter"):
        if isinstance(details.get(key), str):
            return str(details[key])
    errors = details.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        named = errors[0].get("field")
        return str(named) if isinstance(named, str) else None
    return None


def retry_after(error: CorralError, headers: dict[str, str] | None = None) -> int | None:
    """When to come back, in whole seconds: the answer's `Retry-After` (the error's own, or
    one the request carried from elsewhere), else the error's `details.retry_after_s`."""
    for value in (
        error.headers.get("Retry-After"),
        (headers or {}).get("Retry-After"),
        error.details.get("retry_after_s"),
    ):
        if isinstance(value, bool):
            continue
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                continue
        if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
            return math.ceil(value)
    return None


def error_body(error: CorralError, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Llama-chat's error object for `error` (its status is the error's own); `headers` are the
    answer's (a `Retry-After` among them is said in the body too)."""
    details = {**error.details, "type": str(error.error_type)}
    body: dict[str, Any] = {
        "success": False,
        "error": error.message,
        "code": code_of(error),
        "details": details,
    }
    if error.error_type is ErrorType.INVALID_REQUEST:
        field = _field(error.details)
        if field is not None:
            body["field"] = field
    elif error.error_type is ErrorType.SESSION_NOT_FOUND:
        body["error"] = CONVERSATION_NOT_FOUND
        body["resource"] = "conversation"
        session_id = error.details.get("session_id")
        body["id"] = conversation_id_of(session_id) if isinstance(session_id, str) else None
    elif error.error_type is ErrorType.MODEL_NOT_FOUND:
        body["resource"] = "model"
        body["id"] = error.details.get("requested_model")
    elif error.error_type is ErrorType.REQUEST_NOT_FOUND:
        body["resource"] = "request"
    seconds = retry_after(error, headers)
    if seconds is not None:
        body["retry_after"] = seconds
    return body


def conversation_error(error: Exception, headers: dict[str, str]) -> web.StreamResponse:
    """The surface's renderer (surfaces.Surface): llama-chat's shape with the error's status."""
    typed = as_corral_error(error)
    answer_headers = {**headers, **typed.headers}
    body = error_body(typed, answer_headers)
    if "retry_after" in body and "Retry-After" not in answer_headers:
        answer_headers["Retry-After"] = str(body["retry_after"])
    return json_response(body, typed.status, answer_headers)
