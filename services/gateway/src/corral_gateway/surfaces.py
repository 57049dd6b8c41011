"""API surfaces: route groups, each with the one place that turns its errors into responses.

The gateway serves several APIs on one port: Ollama's native API (`ollama/`), Corral's own
endpoints (`corral/`), the operators' (`admin/`), OpenAI's `/v1` (`openai/`) and llama-chat's
conversation API (`conversations/`). Each answers errors in its own shape: Ollama `{"error":
"<text>"}`, Corral `{"error": {"type", "message", "details"}}` (the operators' too), the other two
as their `errors` modules say.
Handlers raise typed errors (`CorralError`, `OllamaRequestError`) and never build an error
response; the surface renders them.

Why route groups and not aiohttp sub-applications: a sub-application needs a path prefix of its
own, but Ollama's paths (`/`, `/api/chat`, `/api/tags` ...) and Corral's (`/api/search`,
`/api/providers/...`, `/sessions`, `/queue`, `/health`) share `/api/` and `/`. So a surface is a
group of routes registered on the one router, each handler wrapped (as Home Assistant's
`http/view.py` request-handler factory does) by its surface's error boundary: a middleware that
runs for that surface's routes only. What matches no route at all (404, 405) is answered by the
app-wide `unknown_routes` middleware as gin answers it, since Ollama's clients are the ones that
probe unknown paths (`/api/...` of a newer Ollama); it also keeps stack traces out of every answer.

A handler that knows its request id early calls `answer_with(request, {"X-Request-Id": ...})`:
every error answer of that request then carries those headers too, before the error's own.

A surface package declares its routes in one table (`Route`: method, path, handler, access)
and registers it with `Surface.add`.

Every route is registered with what it asks of its caller (`Access`: "open", "user", "admin").
Before its handler runs, the guard passes the request through the app's gate
(`identity.gate.Gatekeeper`): the caller is resolved and stored under `CALLER` (handlers read
it with `caller_of`), the route's access is checked and the request counted against the
caller's rate limit; a refusal (401, 403, 429, 503) is a typed error rendered in the surface's
shape like any other, and the rate-limit headers go on every answer of the request. After an
admin route that changes something (any method but GET and HEAD), the gate writes its audit
record. An app without a gate (tests of a bare surface) lets everyone in, as auth off does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType, retry_after_seconds
from corral_gateway.identity.gate import GATEKEEPER, Gatekeeper
from corral_gateway.identity.principal import Access
from corral_gateway.responses import answered, json_response
from corral_gateway.validation import OllamaRequestError, OptionTypeError

log = structlog.get_logger(__name__)

# Headers every error answer of this request carries (its request id, once known).
ERROR_HEADERS = web.RequestKey("error_headers", dict[str, str])

# The typed errors Corral's handlers raise; a surface may catch more (its own error type).
SURFACE_ERRORS: tuple[type[Exception], ...] = (CorralError, OllamaRequestError)

# The response for a caught error, given the request's error headers (`answer_with`).
ErrorRenderer = Callable[[Exception, dict[str, str]], web.StreamResponse]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer_with(request: web.Request, headers: dict[str, str]) -> None:
    """Headers every error answer of this request carries from now on."""
    request[ERROR_HEADERS] = {**request.get(ERROR_HEADERS, {}), **headers}


def as_corral_error(error: Exception) -> CorralError:
    """A refusal from the shared path (Ollama's decoder: a body too large, not JSON, a bad id)
    as the `invalid_request` it is, with its status; a CorralError as it is. Anything else is
    not a typed error of a surface: raised again, for the edge to answer a plain 500."""
    if isinstance(error, OptionTypeError):
        # Ollama's 500 is its own wording of a client's mistake: Corral's shape says so.
        return CorralError(ErrorType.INVALID_REQUEST, error.message, status=400)
    if isinstance(error, OllamaRequestError):
        error_type = ErrorType.INVALID_REQUEST if error.status < 500 else ErrorType.INTERNAL_ERROR
        return CorralError(error_type, error.message, status=error.status)
    if isinstance(error, CorralError):
        return error
    raise error


def ollama_error(error: Exception, headers: dict[str, str]) -> web.StreamResponse:
    """Ollama's shape: `{"error": "<text>"}` with Ollama's status (a model_not_found also lists
    the models that exist, in fields Ollama's clients ignore: `CorralError.ollama_body`)."""
    if isinstance(error, OllamaRequestError):
        return json_response({"error": error.message}, error.status, headers)
    if isinstance(error, CorralError):
        return json_response(error.ollama_body(), error.status, {**headers, **error.headers})
    raise error  # not a typed error of this surface: the edge answers a plain 500


def corral_error(error: Exception, headers: dict[str, str]) -> web.StreamResponse:
    """Corral's shape: `{"error": {"type", "message", "details"}}`, with `retry_after` (seconds)
    beside them and the `Retry-After` header saying the same whenever the error says when to
    come back (`CorralError.corral_body`). A request that Ollama's decoder refused (a body too
    large, not JSON) is an `invalid_request` with that status (`as_corral_error`)."""
    typed = as_corral_error(error)
    answer_headers = {**headers, **typed.response_headers()}
    body = typed.corral_body()
    # A Retry-After the request carried from elsewhere is said in the body too.
    retry_after = retry_after_seconds(answer_headers.get("Retry-After"))
    if retry_after is not None:
        body["error"]["retry_after"] = retry_after
    return json_response(body, typed.status, answer_headers)


class Surface:
    """One API surface: a group of routes on the app's router sharing one error renderer.
    `catches` are the error types its renderer turns into answers."""

    def __init__(
        self,
        name: str,
        render: ErrorRenderer,
        catches: tuple[type[Exception], ...] = SURFACE_ERRORS,
    ) -> None:
        self.name = name
        self.render = render
        self.catches = catches

    def guard(self, handler: RouteHandler, access: Access = "user") -> Handler:
        """`handler` with this surface's error boundary around it, for callers with `access`."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            return await self.serve(request, handler, access)

        guarded.__name__ = getattr(handler, "__name__", "handler")
        guarded.__qualname__ = getattr(handler, "__qualname__", "handler")
        setattr(guarded, ROUTE_META, RouteMeta(self.name, access, handler))
        return guarded

    async def serve(
        self, request: web.Request, handler: RouteHandler, access: Access
    ) -> web.StreamResponse:
        """One request: the gate (identity/gate.py: caller, access, rate limit), the handler,
        this surface's answer for a typed error, and the audit record of an admin action."""
        gate = request.app.get(GATEKEEPER)
        if gate is None or not gate.audits(request, access):
            return await self._answer(request, handler, access, gate)

        def audit(response: web.StreamResponse | None, status: int) -> None:
            request_id = response.headers.get("X-Request-Id") if response is not None else None
            gate.audit(request, status, request_id or request.headers.get("X-Request-Id"))

        return await answered(self._answer(request, handler, access, gate), audit)

    async def _answer(
        self, request: web.Request, handler: RouteHandler, access: Access, gate: Gatekeeper | None
    ) -> web.StreamResponse:
        try:
            if gate is not None:
                answer_with(request, await gate.admit(request, access))
            return await handler(request)
        except self.catches as exc:
            return self.render(exc, dict(request.get(ERROR_HEADERS, {})))

    def add(self, router: web.UrlDispatcher, *routes: Route) -> None:
        """Register `routes` on `router`, each behind this surface's error boundary."""
        for route in routes:
            guarded = self.guard(route.handler, route.access)
            if route.method == "GET":
                router.add_get(route.path, guarded, allow_head=route.head)
            else:
                router.add_route(route.method, route.path, guarded)


@dataclass(frozen=True)
class Route:
    """One route of a surface's table: method, path (aiohttp's syntax, `{name:regex}` allowed),
    handler, and what it asks of callers. A HEAD of its own (Ollama's blob check) is declared
    where no GET is served; a GET answers HEAD too unless `head` is off (Ollama registers HEAD
    on `/`, `/api/version` and `/api/tags` only, and answers it 405 elsewhere)."""

    method: str
    path: str
    handler: RouteHandler
    access: Access = "user"
    head: bool = True


@dataclass(frozen=True)
class RouteMeta:
    """What a registered route is: its surface, what it asks of callers, and the handler
    (whose docstring describes it in /openapi.json)."""

    surface: str
    access: Access
    handler: RouteHandler


ROUTE_META = "corral_route"


def route_meta(handler: object) -> RouteMeta | None:
    """The meta of a route's handler, if a surface registered it."""
    meta = getattr(handler, ROUTE_META, None)
    return meta if isinstance(meta, RouteMeta) else None


OLLAMA = Surface("ollama", ollama_error)
CORRAL = Surface("corral", corral_error)
# The operators' endpoints answer in Corral's shape.
ADMIN = Surface("admin", corral_error)


def admin_only(paths: frozenset[str], surface: Surface = CORRAL) -> Middleware:
    """Routes no surface registered (the common ops routes: `/metrics`) behind the admin
    scope, through `surface`'s gate and error shape. Installed with auth on only."""

    @web.middleware
    async def ops_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in paths:
            return await handler(request)
        return await surface.serve(request, handler, "admin")

    return ops_guard


@web.middleware
async def unknown_routes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Edge behaviour Ollama clients rely on: gin's plain-text 404/405 for what no surface
    serves, and no stack traces ever."""
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
