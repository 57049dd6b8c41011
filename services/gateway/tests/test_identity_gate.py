"""The gate every surface route passes, in process: the gateway's own middlewares, surfaces and
gate over an in-memory key directory (conftest.MemoryDirectory), with stand-in handlers that
report the caller the gate resolved. Each surface's refusals are checked in its own shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_common.api_keys import display_prefix, generate_key, key_hash
from corral_common.contracts.identity import KeyRef
from corral_gateway.app import edge_middlewares
from corral_gateway.identity.gate import GATEKEEPER, Gatekeeper, add_rate_limit_headers
from corral_gateway.identity.principal import caller_of
from corral_gateway.openai import OPENAI
from corral_gateway.settings import GatewaySettings
from corral_gateway.surfaces import ADMIN, CORRAL, OLLAMA

OPERATOR_KEY = "o" * 40
REALM = 'Bearer realm="corral"'

Client = Any


async def whoami(request: web.Request) -> web.StreamResponse:
    caller = caller_of(request)
    return web.json_response(
        {
            "scope": caller.scope,
            "key_id": caller.key_id,
            "principal": caller.principal,
            "address": caller.address,
            "client_id": caller.client_id,
            "fair_share_key": caller.fair_share_key,
        }
    )


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b'{"done":true}\n')
    return response


def gate_app(
    directory: Any, clock: Any, spawned: list[Any] | None = None, **env: Any
) -> web.Application:
    settings = GatewaySettings.model_validate({"admin_key": OPERATOR_KEY, **env})
    app = web.Application(middlewares=edge_middlewares(settings))
    app.on_response_prepare.append(add_rate_limit_headers)

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        assert spawned is not None
        spawned.append(coro)

    app[GATEKEEPER] = Gatekeeper(
        settings, directory, wall=clock, spawn=spawn if spawned is not None else None
    )
    router = app.router
    OLLAMA.get(router, "/", whoami, "open")
    OLLAMA.get(router, "/api/tags", whoami)
    OLLAMA.post(router, "/api/chat", streamed)
    OLLAMA.post(router, "/api/pull", whoami, "admin")
    CORRAL.get(router, "/sessions", whoami)
    OPENAI.get(router, "/v1/models", whoami)
    ADMIN.post(router, "/admin/lane/{action}", whoami, "admin")
    ADMIN.get(router, "/admin/queue", whoami, "admin")
    router.add_get("/metrics", whoami)
    router.add_get("/health", whoami)
    return app


AppFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def serve(aiohttp_client: AiohttpClient, directory: Any, clock: Any) -> AppFactory:
    async def start(**env: Any) -> Client:
        return await aiohttp_client(gate_app(directory, clock, **env))

    return start


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- auth off: today's behaviour -----------------------------------------------------------


async def test_auth_off_lets_everyone_in_as_an_anonymous_caller(
    serve: AppFactory, directory: Any
) -> None:
    client = await serve(auth="off")
    response = await client.get(
        "/api/tags", headers={"X-Client-Id": "team-a", "Authorization": "Bearer garbage"}
    )
    assert response.status == 200
    body = await response.json()
    assert body["scope"] is None and body["key_id"] is None
    assert body["client_id"] == body["fair_share_key"] == "team-a"
    assert body["address"] == "127.0.0.1"
    assert (await client.post("/admin/lane/pause")).status == 200
    assert (await client.get("/metrics")).status == 200
    assert "resolve_key" not in directory.calls


# --- auth on: who may call what ------------------------------------------------------------


async def test_open_and_ops_routes_need_no_key(serve: AppFactory) -> None:
    client = await serve(auth="on")
    for path in ("/", "/health"):
        assert (await client.get(path)).status == 200, path


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/api/tags", "ollama"), ("/sessions", "corral"), ("/v1/models", "openai")],
)
async def test_no_key_is_a_401_in_each_surface_shape(
    serve: AppFactory, path: str, shape: str
) -> None:
    client = await serve(auth="on")
    response = await client.get(path)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == REALM
    body = await response.json()
    if shape == "ollama":
        assert isinstance(body["error"], str) and "API key" in body["error"]
    elif shape == "corral":
        assert body["error"]["type"] == "unauthorized"
    else:
        assert body["error"]["code"] == "invalid_api_key"
        assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_a_stored_key_is_resolved_once_and_names_its_caller(
    serve: AppFactory, directory: Any
) -> None:
    key = generate_key()
    info = directory.add_key(key_hash(key), prefix=display_prefix(key), owner="alice")
    client = await serve(auth="on")
    for headers in (bearer(key), {"X-API-Key": key}, {"authorization": f"bEaReR {key}"}):
        response = await client.get("/api/tags", headers={**headers, "X-Client-Id": "ignored"})
        assert response.status == 200, await response.text()
        body = await response.json()
        assert (body["scope"], body["key_id"], body["principal"]) == ("user", info.id, "alice")
        assert body["client_id"] is None and body["fair_share_key"] == "alice"
    assert directory.calls.count("resolve_key") == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-alone"),
        pytest.param({"Authorization": "Bearer garbage"}, id="garbage"),
        pytest.param({"X-API-Key": "crl_" + "A" * 46}, id="bad-checksum"),
        pytest.param({"X-API-Key": ""}, id="empty"),
    ],
)
async def test_what_is_no_key_is_refused_without_a_lookup(
    serve: AppFactory, directory: Any, headers: dict[str, str]
) -> None:
    client = await serve(auth="on")
    response = await client.get("/sessions", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == REALM
    assert "resolve_key" not in directory.calls


async def test_unknown_revoked_and_expired_keys_are_401(
    serve: AppFactory, directory: Any, clock: Any
) -> None:
    unknown, revoked, expiring = generate_key(), generate_key(), generate_key()
    directory.add_key(key_hash(revoked), revoked_at=clock() - 1)
    directory.add_key(key_hash(expiring), expires_at=clock() + 10)
    client = await serve(auth="on", key_cache_s=60)
    assert (await client.get("/api/tags", headers=bearer(expiring))).status == 200
    for key, text in ((unknown, "invalid API key"), (revoked, "API key revoked")):
        response = await client.get("/api/tags", headers=bearer(key))
        assert response.status == 401
        assert (await response.json()) == {"error": text}
    clock.advance(10)
    # Still remembered, but past its expiry.
    response = await client.get("/api/tags", headers=bearer(expiring))
    assert (response.status, await response.json()) == (401, {"error": "API key expired"})


async def test_two_different_keys_are_401(serve: AppFactory, directory: Any) -> None:
    a, b = generate_key(), generate_key()
    directory.add_key(key_hash(a))
    directory.add_key(key_hash(b))
    client = await serve(auth="on")
    both = {**bearer(a), "X-API-Key": b}
    assert (await client.get("/api/tags", headers=both)).status == 401
    same = {**bearer(a), "X-API-Key": a}
    assert (await client.get("/api/tags", headers=same)).status == 200


async def test_the_operator_key_is_an_admin_and_user_keys_are_403_on_admin_routes(
    serve: AppFactory, directory: Any
) -> None:
    user = generate_key()
    directory.add_key(key_hash(user))
    client = await serve(auth="on")
    response = await client.post("/admin/lane/pause", headers=bearer(OPERATOR_KEY))
    assert response.status == 200
    body = await response.json()
    assert (body["scope"], body["key_id"], body["principal"]) == ("admin", "operator", "operator")
    assert "resolve_key" not in directory.calls
    for method, path in (("POST", "/admin/lane/pause"), ("POST", "/api/pull"), ("GET", "/metrics")):
        response = await client.request(method, path, headers=bearer(user))
        assert response.status == 403, path
        body = await response.json()
        if path == "/api/pull":
            assert body == {"error": "this route needs an admin key"}
        else:
            assert body["error"]["type"] == "forbidden"


async def test_metrics_need_an_admin_key(serve: AppFactory) -> None:
    client = await serve(auth="on")
    response = await client.get("/metrics")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == REALM
    assert (await response.json())["error"]["type"] == "unauthorized"
    assert (await client.get("/metrics", headers={"X-API-Key": OPERATOR_KEY})).status == 200


async def test_an_unreachable_store_fails_closed_for_keys_it_does_not_remember(
    serve: AppFactory, directory: Any
) -> None:
    known, other = generate_key(), generate_key()
    directory.add_key(key_hash(known))
    client = await serve(auth="on", key_cache_s=60)
    assert (await client.get("/api/tags", headers=bearer(known))).status == 200
    directory.down = True
    assert (await client.get("/api/tags", headers=bearer(known))).status == 200
    response = await client.get("/sessions", headers=bearer(other))
    assert response.status == 503
    assert (await response.json())["error"]["message"].startswith("the API key cannot be checked")
    # The operator key needs no store.
    assert (await client.get("/api/tags", headers=bearer(OPERATOR_KEY))).status == 200


async def test_a_key_change_broadcast_evicts_it_at_once(
    aiohttp_client: AiohttpClient, directory: Any, clock: Any
) -> None:
    key = generate_key()
    hashed = key_hash(key)
    directory.add_key(hashed)
    app = gate_app(directory, clock, auth="on", key_cache_s=3600)
    client = await aiohttp_client(app)
    assert (await client.get("/api/tags", headers=bearer(key))).status == 200
    await directory.revoke_key(KeyRef(key_id=directory.keys[hashed].id))
    # Remembered: the revocation is not seen until the broadcast arrives.
    assert (await client.get("/api/tags", headers=bearer(key))).status == 200
    app[GATEKEEPER].key_changed(hashed)
    assert (await client.get("/api/tags", headers=bearer(key))).status == 401
