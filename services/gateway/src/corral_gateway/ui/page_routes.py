"""The page itself: `/ui/` and its script and style sheet, static files of this package.

Served as they are (no build step), to anyone: the page holds no data; what it shows comes from
the admin endpoints it calls with the key the operator gives it. Registered outside the API
surfaces (no `Route` of a surface, so not in /openapi.json): these are files, not API. Every
answer carries a Content-Security-Policy that lets the page load and call nothing but its own
origin, so nothing external can ever load into it.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

# What a file may be, by extension.
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always the checkout's own page, never a stale copy.
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("corral_gateway.ui") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


FILES = _static_files()


async def to_page(request: web.Request) -> web.StreamResponse:
    # The page's script and style are named relative to it, so it lives at `/ui/`.
    raise web.HTTPFound("/ui/")


async def page_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    found = FILES.get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/ui", to_page)
    router.add_get("/ui/", page_file)
    router.add_get("/ui/{name}", page_file)
