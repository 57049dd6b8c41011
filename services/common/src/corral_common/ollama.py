"""How the backend's failures become Corral errors; shared by every service that calls Ollama."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from corral_common.errors import CorralError, ErrorType, backend_unreachable_message
from corral_common.redaction import redact_secrets, redact_url

# What an unreachable, refusing or timed-out backend (or one that cuts a response short)
# raises through aiohttp.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
)


def unreachable(base_url: str, exc: BaseException, server: str = "Ollama") -> CorralError:
    """503 `ollama_connection_error` for a backend that is not there; 504 `backend_timeout`
    for one that is there but silent, so an operator can tell a dead server from a hung one.
    The URL's credentials are masked: this text reaches clients and logs."""
    base_url = redact_url(base_url)
    reason = redact_secrets(str(exc) or type(exc).__name__)
    details = {"ollama_host": base_url, "error": reason}
    # aiohttp's own timeouts (ServerTimeoutError and its subclasses) are TimeoutErrors too.
    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            message = f"Timeout connecting to {server} server at {base_url}"
        else:
            message = f"Timeout waiting for the {server} server at {base_url}"
        return CorralError(ErrorType.BACKEND_TIMEOUT, message, details=details)
    return CorralError(
        ErrorType.OLLAMA_CONNECTION_ERROR,
        backend_unreachable_message(base_url, server),
        details=details,
    )


async def status_error(response: aiohttp.ClientResponse) -> CorralError:
    """A non-200 answer from the backend: Ollama's own status and text pass through unchanged,
    because clients match on them."""
    raw = await response.read()
    try:
        message = str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw.decode(errors="replace").strip() or response.reason or "backend error"
    error_type = ErrorType.MODEL_NOT_FOUND if response.status == 404 else ErrorType.BACKEND_ERROR
    return CorralError(error_type, message, status=response.status)


async def call_json(
    session: aiohttp.ClientSession,
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    client_timeout: aiohttp.ClientTimeout,
    headers: dict[str, str] | None = None,
    server: str = "Ollama",
) -> Any:
    """One request to the backend, one JSON answer (`{}` for Ollama's empty 200s). Its refusals
    come back as its own status and text; a backend down or silent is `unreachable`."""
    try:
        async with session.request(
            method,
            f"{base_url}{path}",
            data=orjson.dumps(body) if body is not None else None,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=client_timeout,
        ) as response:
            if response.status != 200:
                raise await status_error(response)
            raw = await response.read()
    except UNREACHABLE_ERRORS as exc:
        raise unreachable(base_url, exc, server) from exc
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CorralError(
            ErrorType.BACKEND_ERROR, f"backend answered {path} with invalid JSON"
        ) from exc
