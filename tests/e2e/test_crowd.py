"""Clients beyond the scheduler's admission window: their jobs wait in RabbitMQ, unknown to the
scheduler, yet each client gets its headers and a place at once (the gateway's provisional
place, places.py), and every place it is shown only falls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e

# The running job and one waiting one are all the scheduler holds; the rest wait in the broker.
WINDOW = 2
CLIENTS = 7


@pytest.fixture(scope="module")
def narrow_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "narrow-window",
        CORRAL_ADMISSION_WINDOW=str(WINDOW),
        CORRAL_STATUS_INTERVAL_S="0.2",
        CORRAL_HEARTBEAT_S="0.5",
    ) as cluster:
        yield cluster


def chat(content: str) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}]}


async def test_clients_beyond_the_window_are_told_their_place_at_once(
    narrow_cluster: Cluster, emu: EmulatorControl
) -> None:
    url = f"{narrow_cluster.gateway_url}/api/chat"
    await emu.hold()
    async with aiohttp.ClientSession() as session:
        # Running, held at the emulator's gate: its headers come with its first token.
        running = asyncio.create_task(session.post(url, json=chat("first")))
        await emu.wait(held=1)
        # One at a time, so each is behind the ones before it in the broker.
        waiting = [await session.post(url, json=chat(f"c{n}")) for n in range(1, CLIENTS)]
        try:
            # Every one has its headers and a place while the backend still holds the first
            # job: nothing ran, nothing was admitted beyond the window, and still each knows.
            assert all(r.status == 200 for r in waiting)
            places = [int(r.headers["X-Queue-Position"]) for r in waiting]
            assert places == sorted(set(places)) and places[0] >= 1
        finally:
            await emu.release()
        first = await running
        streams = await asyncio.gather(*(lines(r) for r in [first, *waiting]))
    for response, got in zip(waiting, streams[1:], strict=True):
        shown = [int(response.headers["X-Queue-Position"])] + [
            c["queue_info"]["position"] for c in got if "queue_info" in c and not c["done"]
        ]
        assert shown == sorted(shown, reverse=True), shown
        assert shown[-1] == 0
        assert got[-1]["done"] is True
    # The first never waited: no queue chunk, its answer as the backend's.
    assert not any("queue_info" in c and not c["done"] for c in streams[0])


async def lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    async with response:
        return [orjson.loads(line) async for line in response.content if line.strip()]
