"""The gateway's OpenAPI 3.1 document, served at `GET /openapi.json` (access "open").

The document is built from the router itself: every route a surface registered
(`surfaces.route_meta`) is an operation, tagged with its surface and marked with what it asks of
callers (`x-corral-access: open | user | admin`, and `security: []` for open routes), so a route
cannot be added without showing up here with its access level. The ops routes (`/health`,
`/ready`, `/metrics`) are registered by `corral_common.ops` without a surface and are added by
hand. What the router does not know (summaries, bodies, query parameters, statuses) comes from
a table; a route missing from it is still listed, with what its path says.

- `document`: the document and each route's operation;
- `route_details`: the table of what the router does not know, by method and path;
- `native_bodies`: Ollama's request bodies, derived from the Go types the gateway checks;
- `bodies`: the other surfaces' request bodies (`/v1`'s are the decoders' pydantic models);
- `error_schemas`: each surface's error shape, and what each error status means;
- `schema_parts`: media types, schema builders and the value schemas they share.

Answers: the success status with its media types, and the errors a route documents, each in its
surface's error shape.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from corral_gateway.openapi.document import build_document, route_template
from corral_gateway.openapi.route_details import OPENAPI_PATH
from corral_gateway.openapi.schema_parts import JSON
from corral_gateway.surfaces import CORRAL, Route

__all__ = ["OPENAPI_PATH", "add_routes", "build_document", "route_template"]


def add_routes(router: web.UrlDispatcher) -> None:
    """Serve the document of `router`'s routes at OPENAPI_PATH, on the Corral surface. Built
    at the first request, when every route is registered, and kept: routes do not change once
    the app runs."""
    built: list[bytes] = []

    async def openapi_document(_: web.Request) -> web.Response:
        """This document."""
        if not built:
            built.append(orjson.dumps(build_document(router)))
        return web.Response(body=built[0], content_type=JSON)

    CORRAL.add(router, Route("GET", OPENAPI_PATH, openapi_document, "open"))
