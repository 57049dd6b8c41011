"""Health that tells the truth, and what happens to a turn whose gateway dies.

A whole cluster over a SecantusDB of its own (so the test can stop it): the session store's
health is a real write, broadcast to gateways; the gateway's /health says "degraded" with the
store down (stateless chats still work) and "healthy" again once it is back. A client cut off
by its gateway's death still has its turn stored (the contract: finished turns are persisted
whether or not the client is still there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_devstack.mongo import SecantusNode
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory
from tests.polling import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store_node() -> Iterator[SecantusNode]:
    node = SecantusNode()
    node.start()
    yield node
    node.close()


@pytest.fixture(scope="module")
def health_cluster(new_cluster: ClusterFactory, store_node: SecantusNode) -> Iterator[Cluster]:
    cluster = new_cluster(
        "health",
        whole=True,
        store_url=store_node.url,
        CORRAL_STATUS_INTERVAL_S="0.5",
        CORRAL_HEALTH_INTERVAL_S="0.5",
        CORRAL_HEALTH_WRITE_TIMEOUT_S="1",
        CORRAL_MONGO_TIMEOUT_MS="1000",
    )
    with cluster:
        yield cluster


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


def ops_url(cluster: Cluster, service: str, path: str) -> str:
    ready = cluster.services[service].ready_url
    assert ready is not None
    return ready.removesuffix("/ready") + path


async def chat(url: str, content: str, session_id: str | None = None) -> tuple[int, Any]:
    body: dict[str, Any] = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": content}],
        "stream": False,
    }
    if session_id is not None:
        body["session_id"] = session_id
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/chat", json=body) as r:
        return r.status, await r.json()


async def gateway_health_is(cluster: Cluster, status: str, store: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def probe() -> bool:
        _, health = await get_json(f"{cluster.gateway_url}/health")
        found.update(health)
        return bool(health["status"] == status and health["store"]["state"] == store)

    await eventually(probe, 20, f"gateway /health {status} with the store {store}")
    return found


async def test_a_store_that_cannot_write_is_down_and_comes_back(
    health_cluster: Cluster, store_node: SecantusNode, emu: EmulatorControl
) -> None:
    health = await gateway_health_is(health_cluster, "healthy", "up")
    assert health["reasons"] == []
    assert health["store"]["last_write_at"] is not None
    assert health["lane"]["stuck"] is False
    assert health["schedulers"] == 1
    assert health["standby"] == {"schedulers": 1, "expected": 1, "available": False}

    store_node.stop()
    try:
        health = await gateway_health_is(health_cluster, "degraded", "down")
        assert "session store down" in health["reasons"]
        status, store_health = await get_json(ops_url(health_cluster, "session-store", "/health"))
        assert (status, store_health["mongo"]["writable"]) == (200, False)
        status, _ = await get_json(ops_url(health_cluster, "session-store", "/ready"))
        assert status == 503
        # The gateway still serves: degraded is 200, ready, and stateless chats work.
        status, _ = await get_json(f"{health_cluster.gateway_url}/ready")
        assert status == 200
        status, answer = await chat(health_cluster.gateway_url, "no session needed")
        assert status == 200
        assert answer["message"]["content"] == expected_reply("no session needed")
    finally:
        store_node.start()

    await gateway_health_is(health_cluster, "healthy", "up")
    status, _ = await get_json(ops_url(health_cluster, "session-store", "/ready"))
    assert status == 200


async def test_a_turn_is_stored_when_its_gateway_dies_mid_answer(
    health_cluster: Cluster, emu: EmulatorControl
) -> None:
    doomed_gateway = health_cluster.gateway_url
    health_cluster.start_gateway("gateway-2")
    survivor = health_cluster.gateway_url
    session_id = new_id()
    try:
        await emu.hold()
        cut_off = asyncio.create_task(chat(doomed_gateway, "remember me", session_id))
        await emu.wait(held=1)
        health_cluster.services["gateway"].kill()
        with pytest.raises(aiohttp.ClientError):
            await cut_off
        await emu.release()

        async def stored() -> bool:
            status, history = await get_json(f"{survivor}/sessions/{session_id}/history")
            return status == 200 and history["message_count"] == 2

        await eventually(stored, 20, "the cut-off client's turn stored")
        _, history = await get_json(f"{survivor}/sessions/{session_id}/history")
        assert [m["content"] for m in history["messages"]] == [
            "remember me",
            expected_reply("remember me"),
        ]
    finally:
        await emu.release()
        health_cluster.services["gateway-2"].stop()
        health_cluster.start_gateway("gateway")
