"""Cross-origin requests: Ollama's CORS policy (gin-contrib/cors as `server/routes.go` sets it up).

Browsers send a "simple" request (GET/HEAD/POST with a `text/plain`, form or multipart body)
cross-site without asking first; CORS only hides the answer from the page, the request still
acts. So, as gin-contrib/cors does for Ollama, a request whose `Origin` is not allowed is
refused with 403 (empty body) before any handler runs. Allowed origins get the CORS response
headers, and their `OPTIONS` preflights are answered 204 on every path. Requests without an
`Origin` (curl, SDKs, servers) are untouched, and so is a same-origin request whose `Origin` is
`http(s)://` + its own `Host` (browsers add `Origin` to same-origin POSTs; a rebinding attacker
is stopped by the Host check, see host_check.py).

Allowed origins (ollama/ollama `envconfig.AllowedOrigins`): `CORRAL_ORIGINS` (comma-separated,
`*` for any origin, one `*` wildcard per entry), then `http(s)://localhost`, `127.0.0.1` and
`0.0.0.0`, each bare or with any port, then `app://*`, `file://*`, `tauri://*`,
`vscode-webview://*`, `vscode-file://*`. gin-contrib/cors v1.7.2 (Ollama's go.mod) matches a
wildcard entry by prefix and suffix around its `*`; a browser extension needs its scheme listed
(`chrome-extension://*`), as with `OLLAMA_ORIGINS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
_APP_SCHEMES = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")

# gin-contrib/cors DefaultConfig, which Ollama keeps: methods and a 12 hour preflight cache.
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
MAX_AGE_S = 12 * 3600
# The headers Ollama allows (its own list replaces gin-contrib's default), written as
# gin-contrib writes them: canonical header case, joined with commas.
ALLOW_HEADERS = ",".join(
    [
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        # OpenAI SDKs
        "Openai-Beta",
        "X-Stainless-Arch",
        "X-Stainless-Async",
        "X-Stainless-Custom-Poll-Interval",
        "X-Stainless-Helper-Method",
        "X-Stainless-Lang",
        "X-Stainless-Os",
        "X-Stainless-Package-Version",
        "X-Stainless-Poll-Helper",
        "X-Stainless-Retry-Count",
        "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version",
        "X-Stainless-Timeout",
        # Corral's own: the API key header, and the extension headers a browser client sends.
        "X-Api-Key",
        "X-Session-Id",
        "X-Request-Id",
        "X-Client-Id",
        "X-Priority",
        "X-Queue-Progress",
        "X-Queue-Timeout",
        "X-Request-Timeout",
    ]
)
# What a browser page may read of an answer beyond the CORS-safelisted headers: the limits,
# when to retry, and Corral's request, session and queue headers.
EXPOSE_HEADERS = ",".join(
    [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "Retry-After",
        "X-Request-Id",
        "X-Session-Id",
        "X-Queue-Position",
        "X-Estimated-Wait-Ms",
    ]
)


def default_origins() -> list[str]:
    origins: list[str] = []
    for host in _DEFAULT_HOSTS:
        origins += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return [*origins, *_APP_SCHEMES]


@dataclass(frozen=True)
class OriginPolicy:
    allow_all: bool
    exact: frozenset[str]
    wildcards: tuple[tuple[str, str], ...]  # (prefix, suffix) around the one `*`

    @classmethod
    def from_settings(cls, configured: Iterable[str]) -> OriginPolicy:
        entries = [o.strip().lower() for o in configured if o.strip()]
        entries += default_origins()
        wildcards: list[tuple[str, str]] = []
        exact: set[str] = set()
        for entry in entries:
            if entry == "*":
                continue
            if "*" in entry:
                prefix, _, suffix = entry.partition("*")
                # gin-contrib panics on two; a setting should not crash the gateway: the
                # extra stars are matched literally.
                wildcards.append((prefix, suffix))
            else:
                exact.add(entry)
        return cls("*" in entries, frozenset(exact), tuple(wildcards))

    def allows(self, origin: str) -> bool:
        if self.allow_all:
            return True
        # gin-contrib lower-cases its list, not the Origin; browsers send it lower-case anyway.
        origin = origin.lower()
        return origin in self.exact or any(
            origin.startswith(prefix) and origin.endswith(suffix)
            for prefix, suffix in self.wildcards
        )

    def preflight_headers(self, origin: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(
            {
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ALLOW_METHODS,
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOW_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE_S),
            }
        )
        self._add_origin(headers, origin, preflight=True)
        return headers

    def _add_origin(self, headers: CIMultiDict[str], origin: str, *, preflight: bool) -> None:
        if self.allow_all:
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"
            return
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        # The answer depends on the Origin (and, for a preflight, on what it asks): caches
        # must not give one origin's answer to another.
        headers.add(hdrs.VARY, "Origin")
        if preflight:
            headers.add(hdrs.VARY, "Access-Control-Request-Method")
            headers.add(hdrs.VARY, "Access-Control-Request-Headers")

    def normal_headers(self, origin: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(
            {hdrs.ACCESS_CONTROL_EXPOSE_HEADERS: EXPOSE_HEADERS}
        )
        self._add_origin(headers, origin, preflight=False)
        return headers


_CORS_HEADERS = web.RequestKey("corral_cors_headers", CIMultiDict[str])


def origin_middleware(configured: Iterable[str] = ()) -> Middleware:
    """Refuses disallowed origins and answers preflights; `add_cors_headers` (an
    `on_response_prepare` hook) puts the headers on every response to an allowed origin,
    streams and error answers included."""
    policy = OriginPolicy.from_settings(configured)

    @web.middleware
    async def cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN, "")
        if not origin:
            return await handler(request)
        host = request.headers.get(hdrs.HOST, "")
        if origin in (f"http://{host}", f"https://{host}"):
            return await handler(request)
        if not policy.allows(origin):
            return web.Response(status=403)
        if request.method == hdrs.METH_OPTIONS:
            return web.Response(status=204, headers=policy.preflight_headers(origin))
        request[_CORS_HEADERS] = policy.normal_headers(origin)
        return await handler(request)

    return cross_origin


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = request.get(_CORS_HEADERS)
    if headers is None:
        return
    for key, value in headers.items():
        if key.lower() != "vary":
            response.headers[key] = value
        elif value not in response.headers.getall(hdrs.VARY, ()):
            # Added to, never replacing, what the handler varies on.
            response.headers.add(hdrs.VARY, value)
