"""JSON answers as Ollama writes them; every surface's bodies go out this way."""

from __future__ import annotations

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
