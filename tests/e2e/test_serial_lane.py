"""The promise at the heart of Corral: many clients at once, one generation at a time, and every
client always knows where it stands."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.service_metrics import wait_for_metric

pytestmark = pytest.mark.e2e

CLIENTS = 20


@dataclass
class Seen:
    positions: list[int] = field(default_factory=list)
    text: str = ""
    position_before_first_token: int | None = None
    final: dict[str, Any] = field(default_factory=dict)


async def stream_chat(session: aiohttp.ClientSession, url: str, prompt: str) -> Seen:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]}
    seen = Seen()
    async with session.post(f"{url}/api/chat", json=body) as response:
        assert response.status == 200
        async for line in response.content:
            assert line.strip(), "NDJSON must have no blank lines"
            chunk = orjson.loads(line)
            assert "error" not in chunk, chunk
            if chunk["done"]:
                seen.final = chunk
                continue
            if "queue_info" in chunk:
                assert not seen.text, "queue chunks come before the first token"
                seen.positions.append(chunk["queue_info"]["position"])
                continue
            if chunk["message"]["content"] and not seen.text:
                seen.position_before_first_token = seen.positions[-1] if seen.positions else None
            seen.text += chunk["message"]["content"]
    return seen


async def test_concurrent_streams_run_one_at_a_time(cluster: Cluster, emu: EmulatorControl) -> None:
    # Slow enough that all 20 requests pile up behind the first one.
    await emu.configure(token_delay_ms=5)
    prompts = [f"client {i} asks question {i * 7}" for i in range(CLIENTS)]
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(stream_chat(session, cluster.gateway_url, p) for p in prompts)
        )
    stats = await emu.stats()
    assert stats["max_active"] == 1, "the backend must never run two generations at once"
    assert stats["completed"] == CLIENTS
    waited = 0
    for prompt, seen in zip(prompts, results, strict=True):
        assert seen.text == expected_reply(prompt)
        assert seen.final["done"] is True
        if not seen.positions:
            # Started at once: no queue chunk at all, so its stream is exactly Ollama's.
            assert seen.final["queue_info"]["position"] == 0
            assert seen.position_before_first_token is None
            continue
        # Every client that waited is told where it stands, then that it runs.
        waited += 1
        assert seen.positions[0] > 0, "a queue chunk only for a request that waits"
        assert seen.positions == sorted(seen.positions, reverse=True), (
            f"positions went up: {seen.positions}"
        )
        assert seen.position_before_first_token == 0
        assert seen.final["queue_info"]["position"] == max(seen.positions)
    # All but the first (and perhaps a lucky second) really waited in line.
    assert waited >= CLIENTS - 2


async def test_a_client_that_leaves_the_queue_is_never_run(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.hold()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "first"}]}
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(f"{cluster.gateway_url}/api/chat", json=body))
        await emu.wait(held=1)
        leaver_body = {**body, "messages": [{"role": "user", "content": "I will leave"}]}
        async with session.post(f"{cluster.gateway_url}/api/chat", json=leaver_body) as leaver:
            # Read up to its first queue chunk, so it is certainly queued, then hang up.
            chunk = orjson.loads(await leaver.content.readline())
            assert chunk["queue_info"]["position"] == 1
            leaver.close()
        # Release only once the scheduler has taken it out of the lane.
        await wait_for_metric(cluster, 'corral_cancellations_total{stage="queued"} 1.0')
        stayer_body = {**body, "messages": [{"role": "user", "content": "I stay"}]}
        stayer = asyncio.create_task(
            session.post(f"{cluster.gateway_url}/api/chat", json={**stayer_body, "stream": False})
        )
        await emu.release()
        async with await first as response:
            await response.read()
        async with await stayer as response:
            answer = await response.json()
    assert answer["message"]["content"] == expected_reply("I stay")
    contents = [r["messages"][-1]["content"] for r in await emu.requests("chat")]
    assert "I will leave" not in contents
    assert (await emu.stats())["max_active"] == 1


async def test_the_lane_gauges_are_true_idle_during_and_after_a_burst(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    """`corral_queue_depth` (waiting) and `corral_queue_running` at every moment: they used to
    miss the job that started, reading 1 on an idle lane and 5 after a drained burst."""
    await wait_for_metric(cluster, "corral_queue_depth 0.0")
    await wait_for_metric(cluster, "corral_queue_running 0.0")
    await emu.hold()
    body = {"model": "llama3.2", "stream": False}
    async with aiohttp.ClientSession() as session:
        burst = [
            asyncio.create_task(
                session.post(
                    f"{cluster.gateway_url}/api/chat",
                    json={**body, "messages": [{"role": "user", "content": f"burst {i}"}]},
                )
            )
            for i in range(5)
        ]
        await emu.wait(held=1)
        await wait_for_metric(cluster, "corral_queue_depth 4.0")
        await wait_for_metric(cluster, "corral_queue_running 1.0")
        await emu.release()
        for answered in await asyncio.gather(*burst):
            async with answered as response:
                assert response.status == 200
    await wait_for_metric(cluster, "corral_queue_depth 0.0")
    await wait_for_metric(cluster, "corral_queue_running 0.0")
