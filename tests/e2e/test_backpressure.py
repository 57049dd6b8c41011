"""A full queue answers at once with Ollama's own 503, a Retry-After, and loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def small_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    # The scheduler holds one job; the broker queue holds one (or two: quorum queues enforce
    # the limit approximately) more.
    with new_cluster("small", CORRAL_ADMISSION_WINDOW="1", CORRAL_QUEUE_MAX_LENGTH="1") as cluster:
        yield cluster


async def test_full_queue_is_a_503_with_retry_after(
    small_cluster: Cluster, emu: EmulatorControl
) -> None:
    url = f"{small_cluster.gateway_url}/api/chat"
    await emu.hold()
    async with aiohttp.ClientSession() as session:

        async def ask(i: int) -> tuple[int, dict[str, str], dict[str, object]]:
            body = {
                "model": "llama3.2",
                "stream": False,
                "messages": [{"role": "user", "content": f"request {i}"}],
            }
            async with session.post(url, json=body) as response:
                return response.status, dict(response.headers), await response.json()

        accepted: list[asyncio.Task[tuple[int, dict[str, str], dict[str, object]]]] = []
        accepted.append(asyncio.create_task(ask(0)))
        await emu.wait(held=1)
        refused = None
        for i in range(1, 5):
            task = asyncio.create_task(ask(i))
            # A refusal comes back at once; an accepted request stays pending.
            done, _ = await asyncio.wait({task}, timeout=2)
            if done:
                refused = task.result()
                break
            accepted.append(task)
        assert refused is not None, "the queue never refused a request"
        status, headers, body = refused
        assert status == 503
        assert body == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }
        assert int(headers["Retry-After"]) >= 1
        await emu.release()
        answers = await asyncio.gather(*accepted)
    # Everything that was accepted is answered, correctly: no slot is stuck.
    for i, (status, _, body) in enumerate(answers):
        assert status == 200
        assert body["message"] == {"role": "assistant", "content": expected_reply(f"request {i}")}
    assert (await emu.stats())["max_active"] == 1
