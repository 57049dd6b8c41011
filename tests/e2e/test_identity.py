"""Identity, from an outside caller's point of view over real HTTP: keys, scopes,
ownership of conversations, revocation across replicas, rate limits shared by replicas, failed
authentications, secrets kept out of logs, and the refusal to run open on a public address.

One cluster with auth on (`CORRAL_ADMIN_KEY`, any string of 32+ characters) and two gateways on
it; two user keys, A and B, created through `POST /admin/keys`. Tests that add keys or gateways
record them in `IdentityCluster.secrets`, and the module's last test stops the cluster and
greps every log for every secret.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import ollama
import openai
import orjson
import pytest

from corral_common.api_keys import generate_key
from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory
from tests.gateway_http import bearer, call, create_user_key, keyed_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

REALM = 'Bearer realm="corral"'
OPEN_ROUTES = {("GET", "/"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/openapi.json")}
# Values for path parameters: anything that reaches the handler would be served, so nothing
# that names a real object (a key, a running request) or a lane action an admin could mean.
PATH_VALUES = {
    "session_id": "no-such-session",
    "conversation_id": "no-such-conversation",
    "request_id": "no-such-request",
    "name": "llama3.2",
    "model": "llama3.2",
    "digest": "sha256:" + "0" * 64,
    "action": "pause",
    "key_id": "key_0",
    "id": "key_0",
}
# Some routes of each kind that the OpenAPI document must list, so that a document missing
# routes cannot make the sweeps below pass by sweeping nothing.
KNOWN_ROUTES = {
    ("POST", "/api/chat", "user"),
    ("GET", "/sessions/{session_id}/history", "user"),
    ("POST", "/v1/chat/completions", "user"),
    ("POST", "/api/pull", "admin"),
    ("POST", "/admin/keys", "admin"),
    ("DELETE", "/admin/keys/{key_id}", "admin"),
    ("GET", "/admin/audit", "admin"),
    ("POST", "/admin/lane/{action}", "admin"),
    ("GET", "/metrics", "admin"),
}


@dataclass
class IdentityCluster:
    cluster: Cluster
    gateways: tuple[str, str]
    admin: str
    a: dict[str, Any]
    """A's key as `POST /admin/keys` answered it (`key`, `id`, ...)."""
    b: dict[str, Any]
    secrets: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateways[0]


@pytest.fixture(scope="module")
def ident(new_cluster: ClusterFactory) -> Iterator[IdentityCluster]:
    # Rate limits counted in the store on every request (no sync interval): exact across the
    # two gateways, which test_rate_limits_hold_across_gateways checks request by request. The
    # default, counts shared every second, is checked in the gateway's gate tests.
    with keyed_cluster(
        new_cluster,
        "identity",
        CORRAL_STATUS_INTERVAL_S="0.5",
        CORRAL_RATE_LIMIT_SYNC_MS="0",
    ) as keyed:
        cluster, admin = keyed
        first = cluster.gateway_url
        cluster.start_gateway("gateway2")
        second = cluster.gateway_url
        a, b = create_user_key(first, admin, "A"), create_user_key(first, admin, "B")
        yield IdentityCluster(cluster, (first, second), admin, a, b, [admin, a["key"], b["key"]])


async def routes(ident: IdentityCluster) -> list[tuple[str, str, str]]:
    """(method, path template, access) of every route, from the gateway's OpenAPI document."""
    status, _, document = await call("GET", f"{ident.url}/openapi.json")
    assert status == 200, document
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "x-corral-access" in operation:
                found.append((method.upper(), path, operation["x-corral-access"]))
    assert set(found) >= KNOWN_ROUTES, KNOWN_ROUTES - set(found)
    assert {(m, p) for m, p, access in found if access == "open"} <= OPEN_ROUTES
    return found


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)(?::[^}]*)?}", lambda m: PATH_VALUES[m.group(1)], path)


def surface_of(path: str) -> str:
    if path.startswith("/v1/"):
        return "openai"
    corral = ("/api/search", "/api/providers/")
    if path == "/" or (path.startswith("/api/") and not path.startswith(corral)):
        return "ollama"
    return "corral"


def assert_error(path: str, method: str, body: Any, corral_type: str, openai_code: str) -> None:
    """The error in the shape of the route's surface."""
    if method == "HEAD":
        return
    surface = surface_of(path)
    if surface == "ollama":
        assert isinstance(body["error"], str) and body["error"], body
    elif surface == "openai":
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        assert body["error"]["code"] == openai_code, body
    else:
        assert body["error"]["type"] == corral_type, body
        assert body["error"]["message"], body


# -- who may call what -------------------------------------------------------------------


async def test_open_routes_need_no_key(ident: IdentityCluster) -> None:
    for path in ("/", "/health", "/ready", "/openapi.json"):
        status, _, body = await call("GET", f"{ident.url}{path}")
        assert status == 200, (path, body)


async def test_every_other_route_needs_a_key(ident: IdentityCluster) -> None:
    swept = 0
    for method, path, access in await routes(ident):
        if access == "open":
            continue
        status, headers, body = await call(method, f"{ident.url}{concrete(path)}")
        assert status == 401, (method, path, status, body)
        assert headers.get("WWW-Authenticate") == REALM, (method, path, headers)
        assert_error(path, method, body, "unauthorized", "invalid_api_key")
        swept += 1
    assert swept >= len(KNOWN_ROUTES)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-key"),
        pytest.param({"Authorization": "Bearer garbage"}, id="garbage"),
        pytest.param({"Authorization": f"Bearer {generate_key()}"}, id="unknown-key"),
        pytest.param({"X-API-Key": generate_key()}, id="unknown-x-api-key"),
        pytest.param({"Authorization": "Bearer " + "crl_" + "A" * 46}, id="bad-checksum"),
    ],
)
async def test_a_key_that_is_not_a_valid_one_is_401(
    ident: IdentityCluster, headers: dict[str, str]
) -> None:
    for path in ("/api/tags", "/sessions", "/v1/models"):
        status, answer, body = await call("GET", f"{ident.url}{path}", headers=headers)
        assert status == 401, (path, body)
        assert answer.get("WWW-Authenticate") == REALM
        assert_error(path, "GET", body, "unauthorized", "invalid_api_key")


async def test_a_key_is_taken_from_either_header_but_two_different_ones_are_401(
    ident: IdentityCluster,
) -> None:
    a, b = ident.a["key"], ident.b["key"]
    accepted = [
        {"Authorization": f"Bearer {a}"},
        {"Authorization": f"bearer {a}"},
        {"X-API-Key": a},
        {"Authorization": f"Bearer {a}", "X-API-Key": a},
    ]
    for headers in accepted:
        status, _, body = await call("GET", f"{ident.url}/api/tags", headers=headers)
        assert status == 200, (headers.keys(), body)
    both = {"Authorization": f"Bearer {a}", "X-API-Key": b}
    status, _, _ = await call("GET", f"{ident.url}/api/tags", headers=both)
    assert status == 401
    # A valid key under another scheme is no bearer token.
    status, _, _ = await call(
        "GET", f"{ident.url}/api/tags", headers={"Authorization": f"Token {a}"}
    )
    assert status == 401


async def test_user_keys_are_refused_on_every_admin_route(ident: IdentityCluster) -> None:
    swept = 0
    for method, path, access in await routes(ident):
        if access != "admin":
            continue
        status, _, body = await call(method, f"{ident.url}{concrete(path)}", key=ident.a["key"])
        assert status == 403, (method, path, status, body)
        assert_error(path, method, body, "forbidden", "forbidden")
        swept += 1
    assert swept >= sum(1 for *_, access in KNOWN_ROUTES if access == "admin")
    # The lane was never paused by any of that.
    status, _, lane = await call("GET", f"{ident.url}/admin/queue", key=ident.admin)
    assert status == 200
    assert lane["schedulers"] and not any(s["paused"] for s in lane["schedulers"]), lane

    # Each refused attempt at a change is in the audit log, under the key that tried.
    async def attempts_audited() -> bool:
        path = f"/admin/audit?actor={ident.a['id']}&limit=500"
        _, _, audit = await call("GET", f"{ident.url}{path}", key=ident.admin)
        return ("POST /admin/keys", 403) in {(e["action"], e["status"]) for e in audit["entries"]}

    await eventually(attempts_audited, 10, "A's refused attempts in the audit log")


async def test_keys_are_managed_by_admins_and_shown_once(ident: IdentityCluster) -> None:
    created_status, _, created = await call(
        "POST",
        f"{ident.url}/admin/keys",
        key=ident.admin,
        body={"scope": "admin", "label": "second admin"},
    )
    assert created_status == 201, created
    ident.secrets.append(created["key"])
    assert set(created) >= {"id", "key", "prefix", "scope", "label", "created_at"}
    assert created["key"].startswith(created["prefix"])
    assert created["scope"] == "admin"
    # A key made by the new admin key works as an admin key.
    status, _, listing = await call("GET", f"{ident.url}/admin/keys", key=created["key"])
    assert status == 200, listing
    ids = {k["id"] for k in listing["keys"]}
    assert {created["id"], ident.a["id"], ident.b["id"]} <= ids
    text = orjson.dumps(listing).decode()
    for secret in (created["key"], ident.a["key"], ident.b["key"]):
        assert secret not in text, "a key is shown only when it is created"
    status, _, one = await call("GET", f"{ident.url}/admin/keys/{ident.a['id']}", key=ident.admin)
    assert status == 200
    assert (one["id"], one["scope"], one["label"]) == (ident.a["id"], "user", "A")
    assert "key" not in one
    status, _, missing = await call("GET", f"{ident.url}/admin/keys/key_0", key=ident.admin)
    assert status == 404
    assert missing["error"]["type"] == "key_not_found"
    status, _, bad = await call(
        "POST", f"{ident.url}/admin/keys", key=ident.admin, body={"scope": "root"}
    )
    assert status == 400, bad
    # Every change is in the audit log, with who made it; no secret is.
    status, _, audit = await call("GET", f"{ident.url}/admin/audit", key=ident.admin)
    assert status == 200, audit
    actions = [(e["actor"], e["action"], e["status"]) for e in audit["entries"]]
    assert ("operator", "POST /admin/keys", 201) in actions, actions
    audit_text = orjson.dumps(audit).decode()
    assert ident.admin not in audit_text and created["key"] not in audit_text


async def test_an_expired_key_stops_working(ident: IdentityCluster) -> None:
    status, _, created = await call(
        "POST",
        f"{ident.url}/admin/keys",
        key=ident.admin,
        body={"scope": "user", "label": "brief", "expires_at": time.time() + 3},
    )
    assert status == 201, created
    ident.secrets.append(created["key"])

    async def refused() -> bool:
        status, _, _ = await call("GET", f"{ident.url}/api/tags", key=created["key"])
        return status == 401

    await eventually(refused, 15, "the expired key refused")


async def test_metrics_need_an_admin_key(ident: IdentityCluster) -> None:
    assert (await call("GET", f"{ident.url}/metrics"))[0] == 401
    assert (await call("GET", f"{ident.url}/metrics", key=ident.a["key"]))[0] == 403
    status, _, text = await call("GET", f"{ident.url}/metrics", key=ident.admin)
    assert status == 200
    assert "corral_auth_failures_total" in text


# -- ownership ---------------------------------------------------------------------------


async def chat_as(url: str, key: str, session_id: str, content: str) -> ollama.ChatResponse:
    client = ollama.AsyncClient(host=url, headers={**bearer(key), "X-Session-Id": session_id})
    return await client.chat(model="llama3.2", messages=[{"role": "user", "content": content}])


def without(body: Any, session_id: str) -> str:
    """An answer with the session id it names taken out, to compare answers about two ids."""
    return orjson.dumps(body).decode().replace(session_id, "<id>")


async def test_another_users_conversation_does_not_exist_for_them(
    ident: IdentityCluster, emu: EmulatorControl
) -> None:
    a, b, url = ident.a["key"], ident.b["key"], ident.url
    session_id = new_id()
    word = f"zebra{secrets.token_hex(4)}"
    answer = await chat_as(url, a, session_id, f"remember the {word}")
    assert answer.message.content == expected_reply(f"remember the {word}")
    generations = (await emu.stats())["generations"]
    guessed = new_id()

    # Every route that names the session answers B exactly as for a session that never was.
    for target in (session_id, guessed):
        answers = []
        for method, path, body in [
            ("GET", f"/sessions/{target}/history", None),
            ("GET", f"/sessions/{target}/stats", None),
            ("PATCH", f"/sessions/{target}", {"title": "mine now"}),
            ("PUT", f"/sessions/{target}", {"title": "mine now"}),
            ("DELETE", f"/sessions/{target}", None),
        ]:
            status, _, refused = await call(method, f"{url}{path}", key=b, body=body)
            assert status == 404, (method, path, refused)
            assert refused["error"]["type"] == "session_not_found", refused
            answers.append(without(refused, target))
        if target == session_id:
            for_a = answers
        else:
            assert answers == for_a, "no existence oracle: a real id answers as a made-up one"

    # Nor can B chat into it, through any client.
    with pytest.raises(ollama.ResponseError) as chat_refused:
        await chat_as(url, b, session_id, "let me in")
    assert chat_refused.value.status_code == 404
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=b, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="llama3.2",
                messages=[{"role": "user", "content": "let me in"}],
                metadata={"session_id": session_id},
            )
    status, _, _ = await call(
        "POST",
        f"{url}/api/generate",
        key=b,
        body={"model": "llama3.2", "prompt": "let me in", "session_id": session_id},
    )
    assert status == 404
    assert (await emu.stats())["generations"] == generations, "nothing of B's reached the backend"

    # Search and lists cover the caller's own conversations; an admin's cover everyone's.
    def found(listing: dict[str, Any], field: str = "results") -> bool:
        return any(item["session_id"] == session_id for item in listing[field])

    for key, sees in ((a, True), (b, False), (ident.admin, True)):
        status, _, results = await call("GET", f"{url}/api/search?q={word}", key=key)
        assert status == 200, results
        assert found(results) is sees, (key == a, results)
        status, _, listing = await call("GET", f"{url}/sessions?limit=500", key=key)
        assert status == 200, listing
        assert found(listing, "sessions") is sees

    # A's conversation is untouched, and an admin may read it.
    for key in (a, ident.admin):
        status, _, history = await call("GET", f"{url}/sessions/{session_id}/history", key=key)
        assert status == 200, history
        assert history["message_count"] == 2
        assert history.get("title") != "mine now"
    status, _, stats = await call("GET", f"{url}/sessions/{session_id}/stats", key=a)
    assert (status, stats["summary"]["turns"]) == (200, 1)
    # A's next message sees its own history, through the other gateway too.
    await chat_as(ident.gateways[1], a, session_id, "and now?")
    assert [m["content"] for m in (await emu.requests("chat"))[-1]["messages"]] == [
        f"remember the {word}",
        expected_reply(f"remember the {word}"),
        "and now?",
    ]


async def test_a_users_running_request_is_anonymous_to_others(
    ident: IdentityCluster, emu: EmulatorControl
) -> None:
    request_id = new_id()
    session_id = new_id()
    await emu.hold()
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(
            session.post(
                f"{ident.url}/api/chat",
                headers={**bearer(ident.a["key"]), "X-Request-Id": request_id},
                data=orjson.dumps(
                    {
                        "model": "llama3.2",
                        "session_id": session_id,
                        "messages": [{"role": "user", "content": "private matter"}],
                    }
                ),
            )
        )
        try:
            await emu.wait(held=1)
            path = f"/queue/{request_id}"
            own_status, _, own = await call("GET", f"{ident.url}{path}", key=ident.a["key"])
            other_status, _, other = await call("GET", f"{ident.url}{path}", key=ident.b["key"])
        finally:
            await emu.release()
            (await running).close()
    assert own_status == 200, own
    assert (own["state"], own["position"]) == ("running", 0)
    assert other_status == 200, other
    assert other["position"] == 0
    assert set(other) <= {"request_id", "state", "position", "estimated_wait_ms"}, other
    text = orjson.dumps(other).decode()
    for private in (session_id, ident.a["id"], ident.a["prefix"], "llama3.2", "private"):
        assert private not in text, (private, other)


# -- keys across replicas ------------------------------------------------------------------


async def test_a_key_revoked_on_one_gateway_stops_working_on_the_other(
    ident: IdentityCluster,
) -> None:
    first, second = ident.gateways
    status, _, created = await call(
        "POST", f"{first}/admin/keys", key=ident.admin, body={"scope": "user", "label": "doomed"}
    )
    assert status == 201
    key = created["key"]
    ident.secrets.append(key)
    # Known (and cached) by the second gateway first.
    assert (await call("GET", f"{second}/api/tags", key=key))[0] == 200
    status, _, revoked = await call(
        "DELETE", f"{first}/admin/keys/{created['id']}", key=ident.admin
    )
    assert status == 200, revoked
    assert revoked["revoked_at"]

    async def refused_on_the_second() -> bool:
        status, _, _ = await call("GET", f"{second}/api/tags", key=key)
        return status == 401

    # At once by the store's broadcast; within CORRAL_KEY_CACHE_S (5 s) should one be lost.
    await eventually(refused_on_the_second, 8, "the revoked key refused by the second gateway")
    assert (await call("GET", f"{first}/api/tags", key=key))[0] == 401
    status, _, listing = await call("GET", f"{first}/admin/keys", key=ident.admin)
    assert created["id"] not in {k["id"] for k in listing["keys"]}
    status, _, listing = await call(
        "GET", f"{first}/admin/keys?include_revoked=true", key=ident.admin
    )
    assert created["id"] in {k["id"] for k in listing["keys"]}
    assert (await call("DELETE", f"{first}/admin/keys/key_0", key=ident.admin))[0] == 404


async def limited_key(ident: IdentityCluster, per_minute: int) -> str:
    status, _, created = await call(
        "POST",
        f"{ident.url}/admin/keys",
        key=ident.admin,
        body={"scope": "user", "label": "limited", "limits": {"requests_per_minute": per_minute}},
    )
    assert status == 201, created
    ident.secrets.append(created["key"])
    key: str = created["key"]
    return key


async def test_rate_limits_hold_across_gateways(ident: IdentityCluster) -> None:
    # Windows are whole minutes: a run that crosses into the next one starts over, once.
    for _attempt in range(2):
        key = await limited_key(ident, 5)
        seen = []
        for n in range(5):
            gateway = ident.gateways[n % 2]
            status, headers, body = await call("GET", f"{gateway}/api/version", key=key)
            assert status == 200, body
            seen.append(
                (
                    int(headers["X-RateLimit-Limit"]),
                    int(headers["X-RateLimit-Remaining"]),
                    int(headers["X-RateLimit-Reset"]),
                )
            )
        refusals = [
            (path, await call("GET", f"{ident.gateways[n % 2]}{path}", key=key))
            for n, path in enumerate(("/api/version", "/sessions", "/v1/models"), start=1)
        ]
        resets = {reset for *_, reset in seen} | {
            int(h["X-RateLimit-Reset"]) for _, (_, h, _) in refusals
        }
        if len(resets) == 1:
            break
    else:
        pytest.fail("two runs in a row crossed a minute's boundary")
    assert [(limit, remaining) for limit, remaining, _ in seen] == [
        (5, 4),
        (5, 3),
        (5, 2),
        (5, 1),
        (5, 0),
    ]
    assert resets.pop() >= time.time() - 1
    for path, (status, headers, body) in refusals:
        assert status == 429, (path, body)
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-RateLimit-Remaining"] == "0"
        assert_error(path, "GET", body, "rate_limit_exceeded", "rate_limit_exceeded")
    # Another key is not affected.
    assert (await call("GET", f"{ident.gateways[1]}/api/version", key=ident.b["key"]))[0] == 200


async def test_a_rate_limited_key_gets_429_in_the_openai_sdk(ident: IdentityCluster) -> None:
    key = await limited_key(ident, 1)
    async with openai.AsyncOpenAI(
        base_url=f"{ident.gateways[1]}/v1", api_key=key, max_retries=0
    ) as client:

        async def three_calls() -> None:
            # The first may land at the end of a window; then the next is the first again.
            for _ in range(3):
                await client.models.list()

        with pytest.raises(openai.RateLimitError) as limited:
            await three_calls()
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["Retry-After"]) >= 1


async def test_failed_authentications_from_one_address_are_refused(
    ident: IdentityCluster,
) -> None:
    limit = 3
    ident.cluster.start_gateway("gateway-strict", CORRAL_AUTH_FAILURES_PER_MINUTE=str(limit))
    strict = ident.cluster.gateway_url
    statuses = []
    # Within a window the limit+1-th failure is refused; a window's end can start it over once.
    for _ in range(2 * limit + 2):
        status, headers, body = await call("GET", f"{strict}/api/tags", key=generate_key())
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert_error("/api/tags", "GET", body, "rate_limit_exceeded", "rate_limit_exceeded")
            break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {401} and len(statuses) > limit, statuses
    # The refusal is the address's, on that gateway: the others, with no such limit, still
    # tell a good key from a bad one.
    assert (await call("GET", f"{ident.url}/api/tags", key=ident.a["key"]))[0] == 200
    assert (await call("GET", f"{ident.url}/api/tags", key=generate_key()))[0] == 401


# -- the official clients ------------------------------------------------------------------


async def test_the_official_clients_work_with_a_user_key(
    ident: IdentityCluster, emu: EmulatorControl
) -> None:
    key = ident.b["key"]
    client = ollama.AsyncClient(host=ident.url, headers=bearer(key))
    answer = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content == expected_reply("hi")
    streamed = [
        part.message.content or ""
        async for part in await client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(streamed) == expected_reply("hi")
    assert any(m.model and m.model.startswith("llama3.2") for m in (await client.list()).models)
    with pytest.raises(ollama.ResponseError) as anonymous:
        await ollama.AsyncClient(host=ident.url).list()
    assert anonymous.value.status_code == 401

    async with openai.AsyncOpenAI(
        base_url=f"{ident.gateways[1]}/v1", api_key=key, max_retries=0
    ) as oai:
        completion = await oai.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == expected_reply("hi")
        assert any(m.id.startswith("llama3.2") for m in [m async for m in oai.models.list()])
    async with openai.AsyncOpenAI(
        base_url=f"{ident.url}/v1", api_key="not-a-key", max_retries=0
    ) as anonymous_oai:
        with pytest.raises(openai.AuthenticationError) as refused:
            await anonymous_oai.models.list()
    assert refused.value.code == "invalid_api_key"


# -- starting up ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "words"),
    [
        pytest.param(
            {"CORRAL_GATEWAY_HOST": "0.0.0.0", "CORRAL_AUTH": "off"},
            ("CORRAL_AUTH", "CORRAL_ALLOW_OPEN"),
            id="auth-off-on-a-public-address",
        ),
        pytest.param(
            {"CORRAL_AUTH": "on", "CORRAL_ADMIN_KEY": "short-" + secrets.token_hex(8)},
            ("CORRAL_ADMIN_KEY", "32"),
            id="short-admin-key",
        ),
    ],
)
async def test_an_unsafe_gateway_refuses_to_start(
    ident: IdentityCluster, env: dict[str, str], words: tuple[str, ...]
) -> None:
    name = f"gateway-unsafe-{new_id()[:8]}"
    ident.secrets.extend(v for k, v in env.items() if k == "CORRAL_ADMIN_KEY")
    # Started as a plain service (no readiness URL: it must never get that far); nothing is
    # ever sent to it.
    process = ident.cluster.start_service(
        "corral_gateway",
        name,
        {"CORRAL_GATEWAY_PORT": "0", "CORRAL_HEALTH_PORT": "0", **env},
        wait=False,
    )

    async def exited() -> bool:
        return not process.running

    await eventually(exited, 30, f"{name} exiting")
    assert process.returncode not in (None, 0)
    log = process.log_path.read_text(errors="replace")
    assert all(word in log for word in words), log
    assert "gateway ready" not in log


# -- last: the logs --------------------------------------------------------------------------


def test_no_secret_in_any_log(ident: IdentityCluster) -> None:
    """Run last: every log of the whole run, shutdown included, holds no key and no bearer
    token."""
    ident.cluster.stop_all()
    logs = sorted((ident.cluster.workdir / "logs").glob("*.log"))
    assert {p.stem for p in logs} >= {"gateway", "gateway2", "session-store", "scheduler"}
    for log in logs:
        text = log.read_text(errors="replace")
        assert text.strip(), f"{log.name} is empty"
        for secret in ident.secrets:
            assert secret not in text, (log.name, secret[:8])
        assert "Bearer crl_" not in text, log.name
        assert re.search(r"crl_[0-9A-Za-z]{46}", text) is None, log.name
