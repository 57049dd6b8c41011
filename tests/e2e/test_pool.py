"""A pool of two backend servers (two emulator processes, `CORRAL_BACKENDS`) behind the whole
cluster: two generations at once, one per server, never two on one server (each emulator's own
count), positions that only fall across the pool, each server shown in the scheduler's health,
the lane listing and the metrics, and a server that goes down left with its work moved to the
other, then put back when it answers again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory, Emulator, start_emulator
from tests.polling import eventually
from tests.service_metrics import metric_value, metrics_url

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def second_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_emulator(tmp_path_factory.mktemp("emulator-y"), "emulator-y")
    yield emulator
    emulator.process.stop()


@pytest.fixture(scope="module")
def pool_cluster(
    new_cluster: ClusterFactory, emulator: Emulator, second_emulator: Emulator
) -> Iterator[Cluster]:
    backends = f"x={emulator.url},y={second_emulator.url}"
    with new_cluster(
        "pool", whole=True, CORRAL_BACKENDS=backends, CORRAL_STATUS_INTERVAL_S="0.5"
    ) as cluster:
        yield cluster


@pytest.fixture
async def emus(
    emu: EmulatorControl, second_emulator: Emulator
) -> AsyncIterator[dict[str, EmulatorControl]]:
    async with EmulatorControl(second_emulator.url) as y:
        await y.reset()
        await y.configure(token_delay_ms=0, load_ms=0, prompt_ms_per_token=0)
        yield {"x": emu, "y": y}
        await y.release()


@pytest.fixture(autouse=True)
async def serial_servers(emus: dict[str, EmulatorControl]) -> AsyncIterator[None]:
    """Both servers reset for each test, and neither ever ran two generations at once."""
    yield
    for name, control in emus.items():
        assert (await control.stats())["max_active"] <= 1, f"two at once on server {name}"


async def stream_positions(
    session: aiohttp.ClientSession, url: str, prompt: str
) -> tuple[list[int], str]:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": prompt}]}
    positions: list[int] = []
    text = ""
    async with session.post(f"{url}/api/chat", json=body) as response:
        assert response.status == 200
        async for line in response.content:
            chunk = orjson.loads(line)
            assert "error" not in chunk, chunk
            if "queue_info" in chunk and not chunk["done"]:
                positions.append(chunk["queue_info"]["position"])
            elif not chunk["done"]:
                text += chunk["message"]["content"]
    return positions, text


async def scheduler_health(cluster: Cluster) -> dict[str, Any]:
    url = metrics_url(cluster, "scheduler").removesuffix("/metrics") + "/health"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body: dict[str, Any] = await response.json()
        return body


async def lane_listing(cluster: Cluster) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cluster.gateway_url}/admin/queue") as response,
    ):
        assert response.status == 200
        body = await response.json()
        lane: list[dict[str, Any]] = body["queue"]
        return lane


async def test_two_servers_run_two_at_once_never_two_on_one(
    pool_cluster: Cluster, emus: dict[str, EmulatorControl]
) -> None:
    for control in emus.values():
        await control.hold()
    prompts = [f"pool client {i}" for i in range(6)]
    async with aiohttp.ClientSession() as session:
        streams = [
            asyncio.create_task(stream_positions(session, pool_cluster.gateway_url, p))
            for p in prompts
        ]
        # One generation held on each server: two at once.
        for control in emus.values():
            await control.wait(held=1)

        async def two_running_four_waiting() -> bool:
            lane = await lane_listing(pool_cluster)
            running = {e.get("server") for e in lane if e["position"] == 0}
            waiting = sorted(e["position"] for e in lane if e["position"] > 0)
            return running == {"x", "y"} and waiting == [1, 2, 3, 4]

        await eventually(two_running_four_waiting, what="both servers running, four waiting")
        for control in emus.values():
            await control.release()
        results = await asyncio.gather(*streams)
    for prompt, (positions, text) in zip(prompts, results, strict=True):
        assert text == expected_reply(prompt)
        assert positions == sorted(positions, reverse=True), f"positions rose: {positions}"
    completed = []
    for name, control in emus.items():
        stats = await control.stats()
        assert stats["max_active"] <= 1, f"two generations at once on server {name}"
        completed.append(stats["completed"])
    assert sum(completed) == 6 and all(completed)


async def test_each_server_is_shown_in_health_and_metrics(
    pool_cluster: Cluster, emus: dict[str, EmulatorControl]
) -> None:
    async with aiohttp.ClientSession() as session:
        await stream_positions(session, pool_cluster.gateway_url, "hello pool")
    health = await scheduler_health(pool_cluster)
    servers = {s["name"]: s for s in health["servers"]}
    assert set(servers) == {"x", "y"}
    assert all(
        s["connected"] and s["in_rotation"] and s["kind"] == "ollama" for s in servers.values()
    )

    async def gateway_shows_both_and_the_job() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{pool_cluster.gateway_url}/health") as response,
        ):
            shown = {s["name"]: s for s in (await response.json())["ollama"]["servers"]}
        return (
            set(shown) == {"x", "y"}
            and all(s["in_rotation"] for s in shown.values())
            and sum(s["jobs_done"] for s in shown.values()) >= 1
        )

    # The gateway's /health too, from the next status broadcast.
    await eventually(gateway_shows_both_and_the_job, what="both servers in the gateway's /health")
    for name in ("x", "y"):
        in_rotation = f'corral_backend_server_in_rotation{{server="{name}"}}'
        assert await metric_value(pool_cluster, in_rotation) == 1.0
    jobs = [
        await metric_value(pool_cluster, f'corral_backend_server_jobs_total{{server="{n}"}}')
        for n in ("x", "y")
    ]
    assert sum(jobs) >= 1


async def test_a_server_that_goes_down_is_left_and_put_back_when_it_answers(
    pool_cluster: Cluster, emus: dict[str, EmulatorControl], second_emulator: Emulator
) -> None:
    failovers = 'corral_backend_server_failovers_total{server="y"}'
    before = await metric_value(pool_cluster, failovers)
    # y's own count goes with its process: read it first (the fixture reads its new one after).
    assert (await emus["y"].stats())["max_active"] <= 1
    second_emulator.process.stop()  # y is down: connections refused
    try:
        prompts = [f"while y is down {i}" for i in range(4)]
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                *(stream_positions(session, pool_cluster.gateway_url, p) for p in prompts)
            )
        assert [text for _, text in results] == [expected_reply(p) for p in prompts]
        # Four at once: y was handed one, refused it, and it moved to x unseen by its client.
        assert await metric_value(pool_cluster, failovers) > before

        async def y_out() -> bool:
            health = await scheduler_health(pool_cluster)
            y = next(s for s in health["servers"] if s["name"] == "y")
            return not y["connected"]

        await eventually(y_out, what="y shown as not connected")
    finally:
        second_emulator.process.start()
        second_emulator.process.wait_ready(30)

    async def y_back() -> bool:
        health = await scheduler_health(pool_cluster)
        y = next(s for s in health["servers"] if s["name"] == "y")
        return bool(y["connected"] and y["in_rotation"])

    await eventually(y_back, within_s=20, what="y back in rotation")
