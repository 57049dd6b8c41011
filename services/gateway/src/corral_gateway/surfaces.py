"""Edge behaviour Ollama clients rely on: gin's plain-text 404/405, and no stack traces ever."""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from corral_common.clip import clip

log = structlog.get_logger(__name__)


@web.middleware
async def ollama_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed")
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error", path=clip(request.path, 256))
        return web.json_response({"error": "internal error"}, status=500)
