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
from corral_gateway.surfaces import ADMIN, CORRAL, OLLAMA, Route

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
    OLLAMA.add(router, Route("GET", "/", whoami, "open"))
    OLLAMA.add(router, Route("GET", "/api/tags", whoami))
    OLLAMA.add(router, Route("POST", "/api/chat", streamed))
    OLLAMA.add(router, Route("POST", "/api/pull", whoami, "admin"))
    CORRAL.add(router, Route("GET", "/sessions", whoami))
    OPENAI.add(router, Route("GET", "/v1/models", whoami))
    ADMIN.add(router, Route("POST", "/admin/lane/{action}", whoami, "admin"))
    ADMIN.add(router, Route("GET", "/admin/queue", whoami, "admin"))
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


# --- rate limits -------------------------------------------------------------------------


async def test_requests_count_down_on_every_answer_then_429_in_each_shape(
    serve: AppFactory, directory: Any, clock: Any
) -> None:
    key = generate_key()
    directory.add_key(key_hash(key), limits={"requests_per_minute": 3})
    client = await serve(auth="on")
    reset = str(int(clock() // 60) * 60 + 60)
    seen = []
    for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/sessions")):
        response = await client.request(method, path, headers=bearer(key))
        assert response.status == 200
        await response.read()
        seen.append(
            (
                response.headers["X-RateLimit-Limit"],
                response.headers["X-RateLimit-Remaining"],
                response.headers["X-RateLimit-Reset"],
            )
        )
    assert seen == [("3", "2", reset), ("3", "1", reset), ("3", "0", reset)]
    retry_after = str(int(reset) - int(clock()))
    for path in ("/api/tags", "/sessions", "/v1/models"):
        response = await client.get(path, headers=bearer(key))
        assert response.status == 429, path
        assert response.headers["Retry-After"] == retry_after
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["X-RateLimit-Reset"] == reset
        body = await response.json()
        if path == "/api/tags":
            assert "rate limit of 3 requests per minute" in body["error"]
        elif path == "/sessions":
            assert body["error"]["type"] == "rate_limit_exceeded"
        else:
            assert body["error"]["code"] == "rate_limit_exceeded"
    # The next window starts over.
    clock.advance(int(retry_after))
    response = await client.get("/api/tags", headers=bearer(key))
    assert (response.status, response.headers["X-RateLimit-Remaining"]) == (200, "2")


async def test_a_stream_counts_once_and_carries_the_headers(
    serve: AppFactory, directory: Any
) -> None:
    client = await serve(auth="off", anonymous_rate_limit_per_minute=10)
    response = await client.post("/api/chat")
    assert await response.read() == b'{"done":true}\n'
    assert response.headers["X-RateLimit-Remaining"] == "9"
    assert list(directory.counters.values()) == [1]


async def test_keys_share_their_owners_limit_and_anonymous_callers_their_address(
    serve: AppFactory, directory: Any
) -> None:
    first, second = generate_key(), generate_key()
    directory.add_key(key_hash(first), owner="team")
    directory.add_key(key_hash(second), owner="team")
    client = await serve(auth="on", rate_limit_per_minute=100)
    await client.get("/api/tags", headers=bearer(first))
    response = await client.get("/api/tags", headers=bearer(second))
    assert response.headers["X-RateLimit-Remaining"] == "98"
    assert {subject for subject, *_ in directory.counters} == {"key:team"}


async def test_no_limit_costs_no_call_and_open_routes_are_never_counted(
    serve: AppFactory, directory: Any
) -> None:
    client = await serve(auth="off", anonymous_rate_limit_per_minute=0)
    response = await client.get("/api/tags")
    assert response.status == 200
    assert "X-RateLimit-Limit" not in response.headers
    client = await serve(auth="off", anonymous_rate_limit_per_minute=5)
    response = await client.get("/")
    assert "X-RateLimit-Limit" not in response.headers
    assert directory.calls == []


async def test_requests_are_counted_here_and_sent_to_the_store_in_one_call(
    serve: AppFactory, directory: Any, clock: Any
) -> None:
    client = await serve(auth="off", anonymous_rate_limit_per_minute=5)
    remaining = []
    for _ in range(4):
        response = await client.get("/api/tags")
        remaining.append(response.headers["X-RateLimit-Remaining"])
    # The first request learns the cluster's total; the next three are counted here.
    assert remaining == ["4", "3", "2", "1"]
    assert directory.calls == ["count"]
    assert list(directory.counters.values()) == [1]
    await client.app[GATEKEEPER].flush_counts()
    assert directory.calls == ["count", "count"]
    assert list(directory.counters.values()) == [4]


async def test_a_shared_count_learns_what_other_gateways_counted(
    serve: AppFactory, directory: Any, clock: Any
) -> None:
    client = await serve(auth="off", anonymous_rate_limit_per_minute=5)
    assert (await client.get("/api/tags")).headers["X-RateLimit-Remaining"] == "4"
    # Another replica admitted three requests of the same caller meanwhile.
    ((slot, _),) = directory.counters.items()
    directory.counters[slot] += 3
    assert (await client.get("/api/tags")).headers["X-RateLimit-Remaining"] == "3"
    await client.app[GATEKEEPER].flush_counts()
    # The store's total is 5 now: the sixth request is over the limit, refused here without
    # asking the store.
    calls = len(directory.calls)
    response = await client.get("/api/tags")
    assert (response.status, response.headers["X-RateLimit-Remaining"]) == (429, "0")
    assert len(directory.calls) == calls
    # A new window is counted in the store first; what the old one left unsent goes there.
    clock.advance(60)
    response = await client.get("/api/tags")
    assert (response.status, response.headers["X-RateLimit-Remaining"]) == (200, "4")
    assert sorted(directory.counters.values()) == [1, 6]


async def test_with_no_sync_interval_every_request_is_counted_in_the_store(
    serve: AppFactory, directory: Any
) -> None:
    client = await serve(auth="off", anonymous_rate_limit_per_minute=5, rate_limit_sync_ms=0)
    for _ in range(3):
        await client.get("/api/tags")
    assert directory.calls == ["count"] * 3
    assert list(directory.counters.values()) == [3]


async def test_limits_fail_open_while_the_store_is_unreachable(
    serve: AppFactory, directory: Any
) -> None:
    directory.down = True
    client = await serve(auth="off", anonymous_rate_limit_per_minute=1)
    for _ in range(3):
        response = await client.get("/api/tags")
        assert response.status == 200
        assert "X-RateLimit-Limit" not in response.headers
    # After one failure the gate stops asking for a while.
    assert directory.calls == ["count"]


async def test_anonymous_limits_follow_the_client_behind_a_trusted_proxy(
    serve: AppFactory, directory: Any
) -> None:
    client = await serve(
        auth="off", anonymous_rate_limit_per_minute=5, trusted_proxies="127.0.0.0/8"
    )
    body = await (
        await client.get("/api/tags", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    ).json()
    assert body["address"] == "203.0.113.9"
    assert {subject for subject, *_ in directory.counters} == {"ip:203.0.113.9"}


# --- failed authentications --------------------------------------------------------------


async def test_an_address_that_keeps_failing_is_refused_until_its_window_ends(
    serve: AppFactory, directory: Any, clock: Any
) -> None:
    good = generate_key()
    directory.add_key(key_hash(good))
    client = await serve(auth="on", auth_failures_per_minute=3, rate_limit_per_minute=0)
    assert (await client.get("/api/tags", headers=bearer(good))).status == 200
    # A request without a key is no guess: not counted.
    assert (await client.get("/api/tags")).status == 401
    statuses = [
        (await client.get("/v1/models", headers=bearer(generate_key()))).status for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    looked_up = directory.calls.count("resolve_key")
    response = await client.get("/sessions", headers=bearer(generate_key()))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert (await response.json())["error"]["type"] == "rate_limit_exceeded"
    assert directory.calls.count("resolve_key") == looked_up, "no lookup while refused"
    # A key this gateway knows to be good still works; the operator's too.
    assert (await client.get("/api/tags", headers=bearer(good))).status == 200
    assert (await client.get("/api/tags", headers=bearer(OPERATOR_KEY))).status == 200
    clock.advance(60)
    assert (await client.get("/api/tags", headers=bearer(generate_key()))).status == 401


# --- audit -------------------------------------------------------------------------------


async def test_admin_changes_are_audited_with_auth_off_as_anonymous(
    aiohttp_client: AiohttpClient, directory: Any, clock: Any
) -> None:
    spawned: list[Any] = []
    client = await aiohttp_client(
        gate_app(directory, clock, spawned, auth="off", anonymous_rate_limit_per_minute=0)
    )
    await client.post("/admin/lane/pause", headers={"X-Request-Id": "r-1"})
    await client.get("/admin/queue")
    for coro in spawned:
        await coro
    [entry] = directory.audits
    assert (entry.actor, entry.action, entry.target, entry.status, entry.request_id) == (
        "anonymous",
        "POST /admin/lane/{action}",
        "pause",
        200,
        "r-1",
    )
