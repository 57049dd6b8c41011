"""Server-side sessions through the whole cluster: the client sends only its new message and
Corral supplies the history, per model, across restarts, fitted to the model's window."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sessions_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster("sessions", whole=True) as cluster:
        yield cluster


async def sent_messages(emu: EmulatorControl) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await emu.requests("chat"))[-1]["messages"]
    return messages


async def get(cluster: Cluster, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cluster.gateway_url}{path}") as response,
    ):
        return response.status, await response.json()


async def test_the_official_client_is_remembered_across_calls_and_restarts(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    session_id = new_id()
    client = ollama.AsyncClient(
        host=sessions_cluster.gateway_url, headers={"X-Session-Id": session_id}
    )
    await client.chat(model="llama3.2", messages=[{"role": "user", "content": "My name is Alice"}])
    answer = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "What is my name?"}]
    )
    assert answer.message.content == expected_reply("What is my name?")
    assert [m["content"] for m in await sent_messages(emu)] == [
        "My name is Alice",
        expected_reply("My name is Alice"),
        "What is my name?",
    ]

    # A full restart of every service: the conversation lives in the store, not in a process.
    for service in sessions_cluster.services.values():
        service.restart()
    for service in sessions_cluster.services.values():
        service.wait_ready()
    await client.chat(model="llama3.2", messages=[{"role": "user", "content": "And now?"}])
    assert [m["content"] for m in await sent_messages(emu)] == [
        "My name is Alice",
        expected_reply("My name is Alice"),
        "What is my name?",
        expected_reply("What is my name?"),
        "And now?",
    ]

    status, history = await get(sessions_cluster, f"/sessions/{session_id}/history")
    assert status == 200
    assert history["session_id"] == session_id
    assert history["message_count"] == 6
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 3
    assert all(m["timestamp"].endswith("Z") or "+" in m["timestamp"] for m in history["messages"])
    assert {"created_at", "last_activity"} <= set(history)


async def test_each_model_keeps_its_own_history(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    session_id = new_id()
    client = ollama.AsyncClient(host=sessions_cluster.gateway_url)
    options = {"session_id": session_id}
    await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "for llama"}], options=options
    )
    await client.chat(
        model="qwen2.5:0.5b", messages=[{"role": "user", "content": "for qwen"}], options=options
    )
    assert [m["content"] for m in await sent_messages(emu)] == ["for qwen"]
    await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "llama again"}], options=options
    )
    assert [m["content"] for m in await sent_messages(emu)] == [
        "for llama",
        expected_reply("for llama"),
        "llama again",
    ]
    _, qwen_only = await get(sessions_cluster, f"/sessions/{session_id}/history?model=qwen2.5:0.5b")
    assert [m["content"] for m in qwen_only["messages"]] == ["for qwen", expected_reply("for qwen")]


async def chat(cluster: Cluster, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{cluster.gateway_url}/api/chat", data=orjson.dumps(body)) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def test_a_small_window_drops_old_turns_and_keeps_the_system_prompt(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    session_id = new_id()
    system = {"role": "system", "content": "You are terse."}
    infos = []
    for turn in range(8):
        words = " ".join(f"w{turn}x{i}" for i in range(25))
        messages = [system, {"role": "user", "content": f"turn {turn}: {words}"}]
        status, body = await chat(
            sessions_cluster,
            {
                "model": "tiny",
                "messages": messages,
                "stream": False,
                "session_id": session_id,
            },
        )
        assert status == 200, body
        infos.append(body["context_info"])
    sent = await sent_messages(emu)
    assert sent[0] == system
    assert sent[-1]["content"].startswith("turn 7:")
    assert infos[0]["truncated"] is False
    assert infos[-1]["truncated"] is True
    assert infos[-1]["messages_used"] == len(sent)
    assert not any(m["content"].startswith("turn 0:") for m in sent)


async def test_a_message_too_big_for_the_window_is_413_and_stores_nothing(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    session_id = new_id()
    huge = " ".join(["word"] * 2000)
    status, body = await chat(
        sessions_cluster,
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": huge}],
            "stream": False,
            "session_id": session_id,
        },
    )
    assert status == 413
    assert "context" in body["error"]
    assert (await emu.stats())["generations"] == 0
    status, missing = await get(sessions_cluster, f"/sessions/{session_id}/history")
    assert status == 404
    assert missing["error"]["type"] == "session_not_found"


async def test_bad_requests_store_nothing(sessions_cluster: Cluster, emu: EmulatorControl) -> None:
    session_id = new_id()
    headers = {"X-Session-Id": session_id}
    bad_bodies = [
        b'{"model":"llama3.2","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"llama3.2","messages":"not a list"}',
        b"{broken",
    ]
    async with aiohttp.ClientSession() as session:
        for raw in bad_bodies:
            async with session.post(
                f"{sessions_cluster.gateway_url}/api/chat", data=raw, headers=headers
            ) as response:
                assert response.status == 400
    status, _ = await get(sessions_cluster, f"/sessions/{session_id}/history")
    assert status == 404
    assert (await emu.stats())["generations"] == 0


async def test_the_clients_num_ctx_sets_the_window(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    # llama3.2's own window is 4096; the client asks for 256, so this no longer fits.
    huge = " ".join(["word"] * 2000)
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": huge}],
        "stream": False,
        "session_id": new_id(),
    }
    status, _ = await chat(sessions_cluster, {**body, "options": {"num_ctx": 256}})
    assert status == 413
    status, _ = await chat(sessions_cluster, {**body, "session_id": new_id()})
    assert status == 200


async def test_session_endpoints(sessions_cluster: Cluster, emu: EmulatorControl) -> None:
    session_id = new_id()
    await chat(
        sessions_cluster,
        {
            "model": "llama3.2",
            "stream": False,
            "session_id": session_id,
            "messages": [{"role": "user", "content": "remember the zebra"}],
        },
    )
    status, found = await get(sessions_cluster, "/api/search?q=zebra")
    assert status == 200
    assert any(r["session_id"] == session_id for r in found["results"])
    status, stats = await get(sessions_cluster, f"/sessions/{session_id}/stats")
    assert status == 200
    assert stats["summary"]["turns"] == 1
    status, listing = await get(sessions_cluster, "/sessions?limit=100")
    assert any(s["session_id"] == session_id for s in listing["sessions"])
    async with aiohttp.ClientSession() as session:
        url = f"{sessions_cluster.gateway_url}/sessions/{session_id}"
        async with session.patch(url, json={"title": "Zebras"}) as response:
            assert response.status == 200
            assert (await response.json())["title"] == "Zebras"
        async with session.delete(url) as response:
            assert response.status == 200
        async with session.delete(url) as response:
            assert response.status == 404
    status, bad = await get(sessions_cluster, "/sessions/has.dot/history")
    assert status == 400
    assert bad["error"]["type"] == "invalid_request"
    status, _ = await get(sessions_cluster, "/api/search")
    assert status == 400


async def test_concurrent_turns_in_one_session_are_all_kept(
    sessions_cluster: Cluster, emu: EmulatorControl
) -> None:
    session_id = new_id()
    bodies = [
        {
            "model": "llama3.2",
            "stream": False,
            "session_id": session_id,
            "messages": [{"role": "user", "content": f"message {i}"}],
        }
        for i in range(20)
    ]
    results = await asyncio.gather(*(chat(sessions_cluster, b) for b in bodies))
    assert all(status == 200 for status, _ in results)
    _, history = await get(sessions_cluster, f"/sessions/{session_id}/history")
    assert history["message_count"] == 40
    users = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert sorted(users) == sorted(f"message {i}" for i in range(20))
    # Each answer directly follows its question: no turn is split or interleaved.
    pairs = list(zip(history["messages"][::2], history["messages"][1::2], strict=True))
    assert all(a["content"] == expected_reply(q["content"]) for q, a in pairs)
