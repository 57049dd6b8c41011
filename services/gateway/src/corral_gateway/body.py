"""Reading a request body within the size limit and decoding it as Ollama's handler would."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from corral_gateway.validation import OllamaRequestError, decode_body


async def read_body(request: web.Request, limit: int) -> bytes:
    message = f"request body too large: the limit is {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise OllamaRequestError(413, message)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise OllamaRequestError(413, message) from exc


async def read_request(request: web.Request, kind: str, limit: int) -> dict[str, Any]:
    """The decoded body of an Ollama request of `kind` (a validation.REQUEST_TYPES key)."""
    return decode_body(await read_body(request, limit), kind)


def model_field(body: dict[str, Any]) -> str:
    """`model`, or the older `name` that ollama-js still sends."""
    model = body.get("model") or body.get("name") or ""
    return model if isinstance(model, str) else ""
