"""Key management under `/admin` in process: the gateway's admin surface and gate over an
in-memory key directory (conftest.MemoryDirectory), called with the operator key; the audit
records the gate writes after each change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_common.api_keys import display_prefix, is_well_formed, key_hash
from corral_gateway import admin
from corral_gateway.admin.key_routes import parse_expiry, rfc3339
from corral_gateway.app import edge_middlewares
from corral_gateway.identity.gate import GATEKEEPER, Gatekeeper
from corral_gateway.settings import GatewaySettings

OPERATOR_KEY = "k" * 32
ADMIN = {"Authorization": f"Bearer {OPERATOR_KEY}"}


# The audit writes the gate spawned, run by the test when it wants them done.
SPAWNED = web.AppKey("spawned", list[Any])


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, directory: Any, clock: Any) -> Any:
    settings = GatewaySettings(auth="on", admin_key=OPERATOR_KEY)
    app = web.Application(middlewares=edge_middlewares(settings))
    spawned: list[Any] = []
    app[GATEKEEPER] = Gatekeeper(settings, directory, wall=clock, spawn=spawned.append)
    admin.add_routes(app.router)
    app[SPAWNED] = spawned
    return await aiohttp_client(app)


async def settle(client: Any) -> None:
    """Run the audit writes the gate spawned."""
    spawned = client.app[SPAWNED]
    while spawned:
        await spawned.pop(0)


async def test_a_key_is_shown_once_and_only_its_hash_is_stored(
    client: Any, directory: Any, clock: Any
) -> None:
    expires = clock() + 3600
    response = await client.post(
        "/admin/keys",
        headers=ADMIN,
        json={
            "scope": "user",
            "label": "alice's laptop",
            "owner": "alice",
            "expires_at": expires,
            "max_priority": "normal",
            "limits": {"requests_per_minute": 30, "max_queued": 0},
        },
    )
    assert response.status == 201, await response.text()
    created = await response.json()
    key = created["key"]
    assert is_well_formed(key)
    assert created["prefix"] == display_prefix(key)
    assert (created["scope"], created["label"], created["owner"]) == (
        "user",
        "alice's laptop",
        "alice",
    )
    assert created["created_at"] == rfc3339(clock())
    assert created["expires_at"] == rfc3339(expires)
    assert created["max_priority"] == "normal"
    assert created["limits"] == {
        "requests_per_minute": 30,
        "tokens_per_minute": None,
        "tokens_per_day": None,
        "max_queued": 0,
    }
    assert created["created_by"] == "operator"
    [(stored_hash, info)] = directory.keys.items()
    assert stored_hash == key_hash(key) and info.id == created["id"]
    assert key not in repr(info)

    listing = await (await client.get("/admin/keys", headers=ADMIN)).json()
    assert [k["id"] for k in listing["keys"]] == [created["id"]]
    assert listing["total"] == 1
    assert "key" not in listing["keys"][0]
    one = await client.get(f"/admin/keys/{created['id']}", headers=ADMIN)
    assert one.status == 200
    assert (await one.json()) == listing["keys"][0]

    # The new key works at once, as a user key.
    assert (await client.get("/admin/keys", headers={"X-API-Key": key})).status == 403


async def test_revoking_a_key_lists_it_only_on_request(client: Any, directory: Any) -> None:
    created = await (
        await client.post("/admin/keys", headers=ADMIN, json={"scope": "admin"})
    ).json()
    assert (await client.get("/admin/keys", headers={"X-API-Key": created["key"]})).status == 200
    response = await client.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
    assert response.status == 200
    revoked = await response.json()
    assert revoked["revoked_at"] is not None and revoked["id"] == created["id"]
    # This gateway forgets the key as the store's broadcast tells it to.
    client.app[GATEKEEPER].key_changed(key_hash(created["key"]))
    assert (await client.get("/admin/keys", headers={"X-API-Key": created["key"]})).status == 401
    assert (await (await client.get("/admin/keys", headers=ADMIN)).json())["keys"] == []
    everything = await client.get("/admin/keys?include_revoked=true", headers=ADMIN)
    assert [k["id"] for k in (await everything.json())["keys"]] == [created["id"]]
    shown = await (await client.get(f"/admin/keys/{created['id']}", headers=ADMIN)).json()
    assert shown["revoked_at"] == revoked["revoked_at"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/keys/key_00ff"),
        ("DELETE", "/admin/keys/key_00ff"),
        ("GET", "/admin/keys/operator"),
        ("DELETE", "/admin/keys/..%2F..%2Fetc"),
    ],
)
async def test_an_unknown_key_is_404(client: Any, method: str, path: str) -> None:
    response = await client.request(method, path, headers=ADMIN)
    assert response.status == 404
    assert (await response.json())["error"]["type"] == "key_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "scope"),
        ({"scope": "root"}, "scope"),
        ({"scope": "user", "label": 5}, "label"),
        ({"scope": "user", "label": "x" * 201}, "label"),
        ({"scope": "user", "owner": ""}, "owner"),
        ({"scope": "user", "max_priority": "urgent"}, "max_priority"),
        ({"scope": "user", "expires_at": "tomorrow"}, "expires_at"),
        ({"scope": "user", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"scope": "user", "expires_at": 1}, "expires_at"),
        ({"scope": "user", "expires_at": True}, "expires_at"),
        ({"scope": "user", "limits": {"requests_per_minute": -1}}, "limits.requests_per_minute"),
        ({"scope": "user", "limits": {"requests_per_minute": 1.5}}, "limits.requests_per_minute"),
        ({"scope": "user", "limits": {"per_hour": 5}}, "limits"),
        ({"scope": "user", "limits": [1]}, "limits"),
        ({"scope": "user", "expires": 1}, "expires"),
        ([], "body"),
    ],
)
async def test_a_bad_key_request_is_a_clear_400(
    client: Any, directory: Any, body: Any, field: str
) -> None:
    response = await client.post("/admin/keys", headers=ADMIN, json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["type"] == "invalid_request"
    assert error["details"]["field"] == field
    assert directory.keys == {}


async def test_a_body_that_is_not_json_is_a_400(client: Any) -> None:
    response = await client.post("/admin/keys", headers=ADMIN, data=b"{scope")
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request"


def test_expiry_takes_rfc3339_with_an_offset_or_epoch_seconds() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_expiry("2030-01-01T01:00:00Z", now) == now + 3600
    assert parse_expiry("2030-01-01T02:00:00+01:00", now) == now + 3600
    assert parse_expiry(now + 60, now) == now + 60
    assert parse_expiry(None, now) is None
    assert rfc3339(now) == "2030-01-01T00:00:00Z"
    assert rfc3339(now + 0.25) == "2030-01-01T00:00:00.250Z"


async def test_every_admin_change_is_audited_after_it_and_reads_are_not(
    client: Any, directory: Any
) -> None:
    created = await (
        await client.post(
            "/admin/keys", headers={**ADMIN, "X-Request-Id": "req-1"}, json={"scope": "user"}
        )
    ).json()
    await client.post("/admin/keys", headers=ADMIN, json={"scope": "root"})
    await client.get("/admin/keys", headers=ADMIN)
    await client.delete(f"/admin/keys/{created['id']}", headers=ADMIN)
    # A user key's refused attempt is recorded too; a request without any key is not.
    user = await (await client.post("/admin/keys", headers=ADMIN, json={"scope": "user"})).json()
    await client.delete(f"/admin/keys/{created['id']}", headers={"X-API-Key": user["key"]})
    await client.delete(f"/admin/keys/{created['id']}")
    await settle(client)
    recorded = [(a.actor, a.action, a.target, a.status) for a in directory.audits]
    assert recorded == [
        ("operator", "POST /admin/keys", created["id"], 201),
        ("operator", "POST /admin/keys", None, 400),
        ("operator", "DELETE /admin/keys/{key_id}", created["id"], 200),
        ("operator", "POST /admin/keys", user["id"], 201),
        (user["id"], "DELETE /admin/keys/{key_id}", created["id"], 403),
    ]
    first = directory.audits[0]
    assert (first.ip, first.request_id) == ("127.0.0.1", "req-1")

    response = await client.get("/admin/audit?limit=2", headers=ADMIN)
    assert response.status == 200
    log = await response.json()
    assert log["total"] == 5
    assert [e["action"] for e in log["entries"]] == [
        "DELETE /admin/keys/{key_id}",
        "POST /admin/keys",
    ]
    assert log["entries"][0]["at"].endswith("Z")
    mine = await (await client.get(f"/admin/audit?actor={user['id']}", headers=ADMIN)).json()
    assert [e["actor"] for e in mine["entries"]] == [user["id"]]


async def test_an_audit_that_cannot_be_written_does_not_fail_the_change(
    client: Any, directory: Any
) -> None:
    response = await client.post("/admin/keys", headers=ADMIN, json={"scope": "user"})
    assert response.status == 201
    directory.down = True
    await settle(client)
    assert directory.audits == []
