"""How the backend's failures become Corral errors; shared by every service that calls Ollama."""

from __future__ import annotations

import aiohttp
import orjson

from corral_common.errors import CorralError, ErrorType, backend_unreachable_message

# What an unreachable, refusing or timed-out backend raises through aiohttp.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientConnectionError, TimeoutError)


def unreachable(base_url: str, exc: BaseException) -> CorralError:
    reason = str(exc) or type(exc).__name__
    return CorralError(
        ErrorType.OLLAMA_CONNECTION_ERROR,
        backend_unreachable_message(base_url),
        details={"ollama_host": base_url, "error": reason},
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
