"""Which broker messages one request makes, read off RabbitMQ's firehose (every publish and
every delivery, with its exchange, queue and routing key) on a whole cluster: a chat without a
session never reaches the session store's queue, a session's `done` does (as `turn`), and the
store's queue no longer holds the binding that took every `done`. Run with `-s` to see each
request's messages as `[messages]` lines."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import orjson
import pytest

from bench.broker_counts import MessageTrace
from corral_common.ids import new_id
from corral_common.topology import EVENTS_EXCHANGE, LEGACY_DONE_BINDING
from corral_devstack.cluster import Cluster
from corral_devstack.rabbitmq import RabbitNode
from corral_emulator import EmulatorControl, expected_reply
from corral_session_store.turns import TURNS_QUEUE, turns_queue_arguments
from tests.fixtures import Emulator, start_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

CHAT: dict[str, object] = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hello there"}],
}


def vhost_of(amqp_url: str) -> str:
    return urlsplit(amqp_url).path.lstrip("/") or "/"


@pytest.fixture(scope="module")
def traced(
    request: pytest.FixtureRequest,
    fresh_broker: Callable[[], str],
    emulator: Emulator,
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, RabbitNode]]:
    """A whole cluster on a vhost of its own on the session's node, whose session-store queue
    was declared beforehand the old way (bound to every `done`), as a deployment upgraded in
    place has it."""
    if "CORRAL_AMQP_URL" in os.environ:
        pytest.skip("the firehose needs the throwaway node's rabbitmqctl")
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    url = fresh_broker()

    async def legacy_queue() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            events = await channel.declare_exchange(
                EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(
                TURNS_QUEUE, durable=True, arguments=turns_queue_arguments(100_000)
            )
            await queue.bind(events, LEGACY_DONE_BINDING)

    asyncio.run(legacy_queue())
    workdir: Path = tmp_path_factory.mktemp("messages")
    with start_cluster(url, emulator.url, workdir, mongo_url=mongo_url) as cluster:
        yield cluster, node


async def chat(cluster: Cluster, body: dict[str, object], headers: dict[str, str]) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{cluster.gateway_url}/api/chat", data=orjson.dumps(body), headers=headers
        ) as response,
    ):
        assert response.status == 200
        lines = [orjson.loads(line) for line in (await response.read()).splitlines()]
    assert lines[-1]["done"] is True
    return "".join(line["message"]["content"] for line in lines)


def report(title: str, summary: Counter[tuple[str, str, str]]) -> None:
    print(f"\n[messages] {title}")
    for (op, where, kind), count in sorted(summary.items()):
        print(f"[messages]   {op:8} {where or '(default exchange)':38} {kind:10} x{count}")


async def traced_chat(
    cluster: Cluster, node: RabbitNode, headers: dict[str, str]
) -> tuple[MessageTrace, str]:
    async with MessageTrace(node, cluster.amqp_url, vhost=vhost_of(cluster.amqp_url)) as trace:
        text = await chat(cluster, CHAT, {"X-Queue-Progress": "0", **headers})
        await trace.settle()
        # The steady state: a second request, after the first filled the caches (the
        # model's context length, asked of the model manager once per model and TTL).
        trace.clear()
        text = await chat(cluster, CHAT, {"X-Queue-Progress": "0", **headers})
        await trace.settle()
    return trace, text


async def test_a_chat_without_a_session_never_reaches_the_session_store(
    traced: tuple[Cluster, RabbitNode], emu: EmulatorControl
) -> None:
    cluster, node = traced
    trace, text = await traced_chat(cluster, node, {})
    assert text == expected_reply("hello there")
    summary = trace.summary()
    report("one streaming /api/chat without a session", summary)
    assert not [r for r in trace.records if r.where == TURNS_QUEUE]
    gateway_queue = next(r.where for r in trace.records if r.op == "deliver" and r.kind == "done")
    assert gateway_queue.startswith("gateway.")
    # Its `done` was published once and went to its gateway alone.
    assert summary[("publish", EVENTS_EXCHANGE, "done")] == 1
    assert [r.where for r in trace.records if r.kind == "done" and r.op == "deliver"] == [
        gateway_queue
    ]


async def test_a_session_chat_hands_its_turn_to_the_session_store(
    traced: tuple[Cluster, RabbitNode], emu: EmulatorControl
) -> None:
    cluster, node = traced
    session_id = new_id()
    trace, text = await traced_chat(cluster, node, {"X-Session-Id": session_id})
    assert text == expected_reply("hello there")
    summary = trace.summary()
    report("one streaming /api/chat with a session", summary)
    # The `done` is routed as `turn`: once to the store's queue, once to the gateway.
    assert summary[("publish", EVENTS_EXCHANGE, "turn")] == 1
    assert summary[("deliver", TURNS_QUEUE, "turn")] == 1
    assert [r for r in trace.records if r.kind == "turn" and r.op == "deliver"][1:]
    assert not [r for r in trace.records if r.kind == "done"]
    # Durable: persistent, through the quorum queue.
    assert all(r.persistent for r in trace.records if r.kind == "turn")

    async def stored() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{cluster.gateway_url}/sessions/{session_id}/history") as response,
        ):
            history = await response.json() if response.status == 200 else {}
        contents = [m["content"] for m in history.get("messages", [])]
        # Two turns: the warm-up's and the traced one's.
        return contents == ["hello there", expected_reply("hello there")] * 2

    await eventually(stored, what="the turn in the session's history")
