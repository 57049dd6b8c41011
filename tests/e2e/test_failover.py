"""Failover: two schedulers (one active, one hot standby on the single-active-consumer queue) and
two gateways. Killing the active scheduler mid-generation hands its jobs to the standby in
order; the affected client gets a clean error (or, if nothing was written yet, its whole
answer); nothing is duplicated or spliced, and the backend never runs two generations at once.
Killing a gateway fails only its own clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory, TakeoverEnv
from tests.polling import eventually

pytestmark = pytest.mark.e2e

SCHEDULERS = ("scheduler", "scheduler-2")
# The emulator's answer is as long as the question: this one streams for a few seconds.
LONG = "interrupted " + " ".join(f"word{i}" for i in range(80))


@pytest.fixture(scope="module")
def pair(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    env = TakeoverEnv(CORRAL_STATUS_INTERVAL_S="0.2", CORRAL_TAKEOVER_GRACE_S="0.5")
    with new_cluster("pair", **env) as cluster:
        cluster.start_scheduler("scheduler-2", **env)
        yield cluster


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": content}],
        "options": {"num_predict": 30},
        **extra,
    }


async def running_on(cluster: Cluster) -> str:
    """The scheduler whose lane is running a job right now."""
    found: list[str] = []

    async def probe() -> bool:
        for name in SCHEDULERS:
            url = cluster.services[name].ready_url
            assert url is not None
            async with (
                aiohttp.ClientSession() as session,
                session.get(url.removesuffix("/ready") + "/health") as response,
            ):
                if (await response.json()).get("queue", {}).get("running") == 1:
                    found.append(name)
                    return True
        return False

    await eventually(probe, what="a scheduler running the job")
    return found[0]


def revive(cluster: Cluster, name: str) -> None:
    if not cluster.services[name].running:
        cluster.start_scheduler(name, CORRAL_STATUS_INTERVAL_S="0.2")


@asynccontextmanager
async def stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> AsyncIterator[aiohttp.ClientResponse]:
    async with session.post(f"{url}/api/chat", json=body) as response:
        assert response.status == 200
        yield response


async def next_chunk(response: aiohttp.ClientResponse) -> dict[str, Any]:
    chunk: dict[str, Any] = orjson.loads(await response.content.readline())
    return chunk


async def text_of(response: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    text, last = "", {}
    async for line in response.content:
        last = orjson.loads(line)
        if "queue_info" not in last or last.get("done"):
            text += (last.get("message") or {}).get("content") or ""
    return text, last


async def test_killing_the_active_scheduler_mid_stream(pair: Cluster, emu: EmulatorControl) -> None:
    await emu.configure(token_delay_ms=40)
    url = pair.gateway_url
    async with (
        aiohttp.ClientSession() as session,
        stream(session, url, chat(LONG, options={})) as first,
    ):
        while "queue_info" in (chunk := await next_chunk(first)):
            pass
        assert chunk["message"]["content"], "the first answer is streaming"
        async with (
            stream(session, url, chat("second")) as second,
            stream(session, url, chat("third")) as third,
        ):
            assert "queue_info" in await next_chunk(second)
            assert "queue_info" in await next_chunk(third)
            active = await running_on(pair)
            pair.services[active].kill()

            _, last = await text_of(first)
            assert last == {
                "error": "generation was interrupted by a scheduler restart; please retry"
            }
            for prompt, response in (("second", second), ("third", third)):
                text, final = await text_of(response)
                assert final["done"] is True
                # Whole and once: no splice of two generations, no repeat.
                assert text == expected_reply(prompt, 30)
    revive(pair, active)
    order = [r["messages"][-1]["content"] for r in await emu.requests("chat")]
    assert order.index("second") < order.index("third")
    assert order.count("second") == order.count("third") == 1
    assert (await emu.stats())["max_active"] == 1


async def test_a_waiting_non_stream_request_is_retried_transparently(
    pair: Cluster, emu: EmulatorControl
) -> None:
    await emu.configure(token_delay_ms=40)
    async with aiohttp.ClientSession() as session:
        url = f"{pair.gateway_url}/api/chat"
        body = chat("patient " + LONG, stream=False, options={})
        request = asyncio.create_task(session.post(url, json=body))
        await emu.wait(active=1)
        active = await running_on(pair)
        pair.services[active].kill()
        async with await request as response:
            assert response.status == 200
            answer = await response.json()
    revive(pair, active)
    assert answer["message"]["content"] == expected_reply("patient " + LONG)
    assert (await emu.stats())["max_active"] == 1


async def test_a_gateway_restart_fails_only_its_own_clients(
    pair: Cluster, emu: EmulatorControl
) -> None:
    first_gateway = pair.gateway_url
    pair.start_gateway("gateway-2")
    second_gateway = pair.gateway_url
    try:
        await emu.hold()
        async with aiohttp.ClientSession() as session:
            doomed = asyncio.create_task(
                session.post(f"{first_gateway}/api/chat", json=chat("doomed", stream=False))
            )
            await emu.wait(held=1)
            async with stream(session, second_gateway, chat("bystander")) as bystander:
                assert "queue_info" in await next_chunk(bystander)
                pair.services["gateway"].kill()
                with pytest.raises(aiohttp.ClientError):
                    await doomed
                await emu.release()
                text, final = await text_of(bystander)
        assert final["done"] is True
        assert text == expected_reply("bystander", 30)
        assert (await emu.stats())["max_active"] == 1
    finally:
        pair.start_gateway("gateway")
