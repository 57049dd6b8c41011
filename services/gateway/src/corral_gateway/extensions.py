"""Corral's extension fields: where they are read from, and stripping them before the backend.

The official Python client rejects unknown keyword arguments, so a session id may also come in
the `X-Session-Id` header (client-wide headers) or as `options.session_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_common.ids import is_valid_client_id, new_id
from corral_gateway.validation import OllamaRequestError

# Fields that only Corral understands; never forwarded to the backend.
BODY_EXTENSIONS = ("session_id", "request_id")
# `stream` is decided by the scheduler (always streams from the backend).
NOT_FORWARDED = (*BODY_EXTENSIONS, "stream")


@dataclass(frozen=True)
class Extensions:
    request_id: str
    session_id: str | None
    queue_progress: bool
    client_key: str | None


def read_extensions(request: web.Request, body: dict[str, Any]) -> Extensions:
    raw_options = body.get("options")
    options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
    session_id = _first(
        body.get("session_id"), request.headers.get("X-Session-Id"), options.get("session_id")
    )
    request_id = _first(body.get("request_id"), request.headers.get("X-Request-Id"))
    for name, value in (("session_id", session_id), ("request_id", request_id)):
        if value is not None and not is_valid_client_id(value):
            raise OllamaRequestError(
                400, f"invalid {name}: use 1 to 128 letters, digits, '-' or '_'"
            )
    return Extensions(
        request_id=request_id or new_id(),
        session_id=session_id,
        queue_progress=request.headers.get("X-Queue-Progress", "1").strip() != "0",
        client_key=request.headers.get("X-Client-Id"),
    )


def backend_payload(body: dict[str, Any]) -> dict[str, Any]:
    payload = {key: value for key, value in body.items() if key not in NOT_FORWARDED}
    options = payload.get("options")
    if isinstance(options, dict) and "session_id" in options:
        payload["options"] = {k: v for k, v in options.items() if k != "session_id"}
    return payload


def _first(*values: Any) -> str | None:
    for value in values:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise OllamaRequestError(400, "session_id and request_id must be strings")
        return value
    return None
