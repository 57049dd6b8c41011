"""JSON answers as Ollama writes them; every surface's bodies go out this way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from corral_common import jsonutil


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """JSON as Ollama writes it (`application/json; charset=utf-8`), serialised with orjson."""
    return web.Response(
        body=jsonutil.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


# What a request whose client went away before its answer is counted as (nginx's convention).
CLIENT_CLOSED = 499


async def answered(
    answer: Awaitable[web.StreamResponse],
    then: Callable[[web.StreamResponse | None, int], None],
) -> web.StreamResponse:
    """`answer`, awaited; then `then(response, status)` however it ended: the response's
    status, an HTTP exception's, 499 when the client left (cancelled), 500 for anything else
    (the response is None unless it came back). For the access log and the audit record."""
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await answer
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        then(response, status)
