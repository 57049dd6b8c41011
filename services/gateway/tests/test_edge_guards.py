"""The Host check (DNS rebinding) and the origin check (cross-site requests), in the gateway's
own middleware stack, in front of a stand-in handler that records whether it ran."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_gateway.app import edge_middlewares
from corral_gateway.host_check import AllowedHosts, bound_to_loopback, host_part
from corral_gateway.origins import ALLOW_HEADERS, OriginPolicy, add_cors_headers
from corral_gateway.settings import GatewaySettings

ACTED = web.AppKey("acted", list[str])


def edge_app(**settings: str) -> web.Application:
    app = web.Application(middlewares=edge_middlewares(GatewaySettings.model_validate(settings)))
    app.on_response_prepare.append(add_cors_headers)
    app[ACTED] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        request.app[ACTED].append(await request.text())
        return web.json_response({"done": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"done":true}\n')
        return response

    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/stream", stream)
    return app


# --- Host check ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost:8000", "localhost"),
        ("LocalHost", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("", ""),
    ],
)
def test_host_part_drops_the_port(header: str, host: str) -> None:
    assert host_part(header) == host


def test_loopback_binding() -> None:
    assert bound_to_loopback("127.0.0.1")
    assert bound_to_loopback("::1")
    assert bound_to_loopback("localhost")
    assert not bound_to_loopback("0.0.0.0")
    assert not bound_to_loopback("::")
    assert not bound_to_loopback("")
    assert not bound_to_loopback("192.168.1.10")


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "app.localhost",
        "printer.local",
        "db.internal",
        socket.gethostname().lower(),
        "",
    ],
)
def test_ollamas_local_names_are_allowed(host: str) -> None:
    assert AllowedHosts().name_allowed(host)


@pytest.mark.parametrize(
    "host", ["example.com", "localhost.example.com", "evil.localhost.com", "local", "internal"]
)
def test_other_names_are_not(host: str) -> None:
    assert not AllowedHosts().name_allowed(host)


def test_configured_hosts() -> None:
    allowed = AllowedHosts(["corral.example.com", "*.lab.example", "203.0.113.7"])
    assert allowed.name_allowed("corral.example.com")
    assert allowed.name_allowed("gpu.lab.example")
    assert not allowed.name_allowed("lab.example.evil")
    assert allowed.address_allowed(ipaddress.ip_address("203.0.113.7"))
    # Go's IsPrivate, not Python's wider is_private: documentation ranges are not private.
    assert not AllowedHosts().address_allowed(ipaddress.ip_address("203.0.113.8"))
    for address in ("127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.0.9", "0.0.0.0", "fd00::1"):
        assert AllowedHosts().address_allowed(ipaddress.ip_address(address)), address


def test_ipv4_mapped_addresses_are_judged_as_ipv4_like_go() -> None:
    # netip's IsLoopback and IsPrivate unmap `::ffff:a.b.c.d` first: Ollama lets these in.
    for address in ("::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:192.168.1.5"):
        assert AllowedHosts().address_allowed(ipaddress.ip_address(address)), address
    assert not AllowedHosts().address_allowed(ipaddress.ip_address("::ffff:8.8.8.8"))


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8000",
        "localhost:8000",
        "[::1]:8000",
        "[::ffff:127.0.0.1]:8000",
        "my.localhost",
        "10.0.0.5:80",
    ],
)
async def test_local_hosts_reach_the_handler(aiohttp_client: AiohttpClient, host: str) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.post("/api/chat", data="{}", headers={"Host": host})
    assert response.status == 200
    assert client.app is not None and client.app[ACTED] == ["{}"]


async def test_a_rebound_name_is_refused_like_ollama(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.post("/api/chat", data="{}", headers={"Host": "evil.example:8000"})
    assert response.status == 403
    assert await response.read() == b""
    assert client.app is not None and client.app[ACTED] == []
    # Every route, unknown ones and the ops endpoints included.
    for path in ("/health", "/nope"):
        assert (await client.get(path, headers={"Host": "evil.example"})).status == 403


async def test_configured_host_is_allowed(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app(allowed_hosts="corral.example.com, other.example"))
    response = await client.post("/api/chat", data="{}", headers={"Host": "corral.example.com"})
    assert response.status == 200


async def test_options_to_a_local_name_is_answered_at_once(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.options("/api/chat", headers={"Host": "localhost:8000"})
    assert response.status == 204


async def test_no_host_check_when_not_bound_to_loopback(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app(gateway_host="0.0.0.0"))
    response = await client.post("/api/chat", data="{}", headers={"Host": "corral.example:8000"})
    assert response.status == 200


# --- Origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost",
        "http://localhost:3000",
        "https://127.0.0.1:8443",
        "http://0.0.0.0:8080",
        "app://obsidian.md",
        "file://",
        "tauri://localhost",
        "vscode-webview://abc",
        "vscode-file://vscode-app",
    ],
)
def test_ollamas_default_origins(origin: str) -> None:
    assert OriginPolicy.from_settings([]).allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "chrome-extension://abcdef",
        "null",
    ],
)
def test_other_origins_are_not(origin: str) -> None:
    assert not OriginPolicy.from_settings([]).allows(origin)


def test_configured_origins() -> None:
    policy = OriginPolicy.from_settings(["https://chat.example.com", "chrome-extension://*"])
    assert policy.allows("https://chat.example.com")
    assert policy.allows("chrome-extension://abcdef")
    assert not policy.allows("https://chat.example.com.evil")
    assert OriginPolicy.from_settings(["*"]).allows("https://anything.example")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_cross_site_simple_post_cannot_act(
    aiohttp_client: AiohttpClient, content_type: str
) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.post(
        "/api/chat",
        data='{"model":"m","messages":[]}',
        headers={"Origin": "https://evil.example", "Content-Type": content_type},
    )
    assert response.status == 403
    assert await response.read() == b""
    assert client.app is not None and client.app[ACTED] == []


async def test_an_allowed_origin_gets_cors_headers(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    origin = "http://localhost:3000"
    response = await client.post("/api/chat", data="{}", headers={"Origin": origin})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in response.headers.getall("Vary")
    # A page may read its rate limits, when to retry and its session id.
    exposed = response.headers["Access-Control-Expose-Headers"].split(",")
    assert {"X-RateLimit-Remaining", "Retry-After", "X-Session-Id"} <= set(exposed)
    streamed = await client.post("/api/stream", data="{}", headers={"Origin": origin})
    assert streamed.headers["Access-Control-Allow-Origin"] == origin
    # A 404 from the router still tells the page what happened.
    missing = await client.get("/nope", headers={"Origin": origin})
    assert missing.status == 404
    assert missing.headers["Access-Control-Allow-Origin"] == origin


async def test_a_preflight_is_answered_on_every_route(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    origin = "https://127.0.0.1:5173"
    for path in ("/api/chat", "/v1/chat/completions", "/anything"):
        response = await client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-stainless-os",
            },
        )
        assert response.status == 204, path
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Methods"] == (
            "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
        )
        assert response.headers["Access-Control-Allow-Headers"] == ALLOW_HEADERS
        assert {"X-Stainless-Os", "X-Api-Key", "X-Session-Id"} <= set(ALLOW_HEADERS.split(","))
        assert response.headers["Access-Control-Max-Age"] == "43200"
    assert client.app is not None and client.app[ACTED] == []


async def test_a_disallowed_preflight_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.options("/api/chat", headers={"Origin": "https://evil.example"})
    assert response.status == 403


async def test_any_origin_when_configured(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app(origins="*"))
    response = await client.post("/api/chat", data="{}", headers={"Origin": "https://x.example"})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_requests_without_origin_are_untouched(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    response = await client.post("/api/chat", data="{}")
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_same_origin_request_is_not_cross_origin(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(edge_app())
    host = f"127.0.0.1:{client.port}"
    response = await client.post("/api/chat", data="{}", headers={"Origin": f"http://{host}"})
    assert response.status == 200
    # A rebinding page is same-origin too, but its Host gives it away.
    rebound = await client.post(
        "/api/chat",
        data="{}",
        headers={"Host": "evil.example:8000", "Origin": "http://evil.example:8000"},
    )
    assert rebound.status == 403
