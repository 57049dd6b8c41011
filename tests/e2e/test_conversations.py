"""Llama-chat's conversation API through the whole cluster, as its clients use it:
llama-chat's test script and SDK flow (models, config, create a conversation, three messages,
list, stats, search, rename, delete) with exactly llama-chat's JSON shapes (and Corral's documented
additions); the same conversation through the Ollama API; a streamed message that waits in the
queue and is told its place; a queued message whose client leaves is cancelled; and, with keys
on, another user's conversation is a 404 on every route and outside their list and search.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests import gateway_http
from tests.fixtures import ClusterFactory
from tests.gateway_http import keyed_cluster
from tests.polling import eventually
from tests.service_metrics import metric_value, wait_for_value

pytestmark = pytest.mark.e2e

MODEL = "llama3.2"

# Llama-chat's fields, and Corral's additions where the document says so (docs/conversations.md).
CHAT_ANSWER = {
    "response",
    "model",
    "response_time_ms",
    "estimated_tokens",
    "metrics",
} | {"conversation_id", "request_id", "queue_info", "context_info"}
METRICS = {"completion_tokens", "prompt_tokens", "total_tokens", "tokens_per_second"}
CONVERSATION = {"id", "title", "model", "created_at", "updated_at"}
MESSAGE = {
    "id",
    "conversation_id",
    "role",
    "content",
    "model",
    "timestamp",
    "response_time_ms",
    "estimated_tokens",
}
SUMMARY = {"total_messages", "assistant_messages", "avg_response_time", "total_tokens"}
BY_ROLE = {"role", "count", "avg_length", "total_tokens", "avg_response_time"}
SEARCH_RESULT = {
    "id",
    "title",
    "model",
    "updated_at",
    "content",
    "role",
    "timestamp",
    "response_time_ms",
    "estimated_tokens",
} | {"session_id", "last_activity", "request_id"}
NOT_FOUND = {"success", "error", "code", "details", "resource", "id"}


async def call(
    url: str, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, Any]:
    """Status and body of one request, sent as llama-chat's client sends it (JSON)."""
    status, _, answer = await gateway_http.call(
        method, f"{url}{path}", key=key, body=body, headers={"Content-Type": "application/json"}
    )
    return status, answer


def model_of(models: list[str]) -> str:
    """Llama-chat's client takes the first model; the emulator lists embedding models too, so
    this flow takes its chat model."""
    return next(name for name in models if name.startswith(MODEL))


async def test_the_seeds_client_flow(cluster: Cluster, emu: EmulatorControl) -> None:
    url = cluster.gateway_url

    # 1. Models: names, their count, and the backend's address (no credentials).
    status, models = await call(url, "GET", "/api/models")
    assert status == 200, models
    assert set(models) == {"models", "count", "backend_url"}
    assert models["count"] == len(models["models"]) > 0
    assert all(isinstance(name, str) for name in models["models"])
    assert models["backend_url"].startswith("http://")
    model = model_of(models["models"])

    # 2. Config: the effective, non-secret settings.
    status, config = await call(url, "GET", "/api/config")
    assert status == 200, config
    assert set(config) == {
        "default_model",
        "timeouts",
        "context",
        "queue",
        "limits",
        "search",
        "features",
        "response_optimization",
    }
    assert config["features"]["auth"] is False
    assert config["context"]["default_num_ctx"] > 0
    assert config["response_optimization"] == {"stream": False}
    text = orjson.dumps(config).decode()
    assert "://" not in text and "amqp" not in text and "mongo" not in text

    # 3. Create a conversation.
    status, created = await call(
        url, "POST", "/api/conversations", {"title": "API Test", "model": model}
    )
    assert status == 201, created
    assert set(created) == {"conversation_id"}
    conv_id = created["conversation_id"]
    assert isinstance(conv_id, int)

    # 4. Three messages, each with its performance figures.
    for i in range(1, 4):
        message = f"Test message {i}"
        status, answer = await call(
            url,
            "POST",
            "/api/chat",
            {"conversation_id": conv_id, "message": message, "model": model},
        )
        assert status == 200, answer
        assert set(answer) == CHAT_ANSWER
        assert answer["response"] == expected_reply(message)
        assert (answer["model"], answer["conversation_id"]) == (model, conv_id)
        assert isinstance(answer["response_time_ms"], int) and answer["response_time_ms"] >= 0
        assert set(answer["metrics"]) == METRICS
        metrics = answer["metrics"]
        assert answer["estimated_tokens"] == metrics["completion_tokens"] > 0
        assert metrics["total_tokens"] == metrics["prompt_tokens"] + metrics["completion_tokens"]
        assert isinstance(metrics["tokens_per_second"], float)
        # The history went to the model: every earlier message, then this one.
        assert answer["context_info"]["messages_used"] == 2 * i - 1
    sent = (await emu.requests("chat"))[-1]["messages"]
    assert [m["content"] for m in sent] == [
        "Test message 1",
        expected_reply("Test message 1"),
        "Test message 2",
        expected_reply("Test message 2"),
        "Test message 3",
    ]

    # 5. The list.
    status, listing = await call(url, "GET", "/api/conversations")
    assert status == 200
    assert set(listing) == {"conversations"}
    mine = [c for c in listing["conversations"] if c["id"] == conv_id]
    assert len(mine) == 1 and set(mine[0]) == CONVERSATION
    assert (mine[0]["title"], mine[0]["model"]) == ("API Test", model)

    # 6. The conversation, with its messages and stats.
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert status == 200, detail
    assert set(detail) == {"conversation", "messages", "stats"}
    assert set(detail["conversation"]) == CONVERSATION
    messages = detail["messages"]
    assert [m["id"] for m in messages] == [1, 2, 3, 4, 5, 6]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    for m in messages:
        assert set(m) == MESSAGE
        assert m["conversation_id"] == conv_id
        assert isinstance(m["estimated_tokens"], int)
        if m["role"] == "user":
            assert (m["model"], m["response_time_ms"]) == (None, None)
        else:
            assert m["model"] == model and isinstance(m["response_time_ms"], int)
    assert set(detail["stats"]) == SUMMARY

    status, stats = await call(url, "GET", f"/api/stats/{conv_id}")
    assert status == 200, stats
    assert set(stats) == {"summary", "by_role"}
    assert stats["summary"] == detail["stats"]
    assert (stats["summary"]["total_messages"], stats["summary"]["assistant_messages"]) == (6, 3)
    assert stats["summary"]["total_tokens"] == sum(m["estimated_tokens"] for m in messages)
    assert [row["role"] for row in stats["by_role"]] == ["user", "assistant"]
    for row in stats["by_role"]:
        assert set(row) == BY_ROLE and row["count"] == 3
    user_row, assistant_row = stats["by_role"]
    assert user_row["avg_response_time"] is None
    assert assistant_row["avg_response_time"] == stats["summary"]["avg_response_time"]

    # 7. Search: llama-chat's `q`, its fields and Corral's in one answer.
    status, found = await call(url, "GET", "/api/search?q=test%20message%202&limit=50")
    assert status == 200, found
    assert set(found) == {"results", "query", "count", "partial"}
    assert found["query"] == "test message 2" and found["count"] == len(found["results"]) == 2
    for result in found["results"]:
        assert set(result) == SEARCH_RESULT
        assert result["id"] == conv_id and result["session_id"] == str(conv_id)
    answer_hit = next(r for r in found["results"] if r["role"] == "assistant")
    assert answer_hit["response_time_ms"] == messages[3]["response_time_ms"]
    assert answer_hit["estimated_tokens"] == messages[3]["estimated_tokens"]

    # 8. Rename.
    status, renamed = await call(
        url, "PUT", f"/api/conversations/{conv_id}", {"title": "Updated Conversation Title"}
    )
    assert (status, renamed) == (200, {"success": True, "title": "Updated Conversation Title"})
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert detail["conversation"]["title"] == "Updated Conversation Title"

    # 9. Delete, and it is gone from every route.
    status, deleted = await call(url, "DELETE", f"/api/conversations/{conv_id}")
    assert (status, deleted) == (200, {"success": True})
    for method, path in (
        ("GET", f"/api/conversations/{conv_id}"),
        ("GET", f"/api/stats/{conv_id}"),
        ("DELETE", f"/api/conversations/{conv_id}"),
    ):
        status, gone = await call(url, method, path)
        assert status == 404, gone
        assert set(gone) == NOT_FOUND
        assert (gone["success"], gone["error"], gone["code"]) == (
            False,
            "Conversation not found",
            "NOT_FOUND",
        )
        assert (gone["resource"], gone["id"]) == ("conversation", conv_id)
    status, gone = await call(
        url, "POST", "/api/chat", {"conversation_id": conv_id, "message": "x"}
    )
    assert (status, gone["code"]) == (404, "NOT_FOUND")


async def test_both_apis_address_one_conversation(cluster: Cluster, emu: EmulatorControl) -> None:
    url = cluster.gateway_url
    status, created = await call(
        url, "POST", "/api/conversations", {"title": "Both", "model": MODEL}
    )
    assert status == 201, created
    conv_id = created["conversation_id"]
    status, _ = await call(url, "POST", "/api/chat", {"conversation_id": conv_id, "message": "one"})
    assert status == 200
    # Ollama's API, session "N": the conversation's history comes with it, and the turn lands
    # in the conversation.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "two"}],
        "stream": False,
        "session_id": str(conv_id),
    }
    status, native = await call(url, "POST", "/api/chat", body)
    assert status == 200, native
    assert native["message"]["content"] == expected_reply("two")
    assert [m["content"] for m in (await emu.requests("chat"))[-1]["messages"]] == [
        "one",
        expected_reply("one"),
        "two",
    ]
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert [m["content"] for m in detail["messages"]] == [
        "one",
        expected_reply("one"),
        "two",
        expected_reply("two"),
    ]
    status, history = await call(url, "GET", f"/sessions/{conv_id}/history")
    assert (status, history["message_count"]) == (200, 4)

    # A number some session already has is skipped: a client's session "N+1" stays its own.
    taken = conv_id + 1
    status, _ = await call(url, "POST", "/api/chat", {**body, "session_id": str(taken)})
    assert status == 200
    status, created = await call(
        url, "POST", "/api/conversations", {"title": "Next", "model": MODEL}
    )
    assert status == 201 and created["conversation_id"] > taken
    status, history = await call(url, "GET", f"/sessions/{taken}/history")
    assert history["message_count"] == 2


async def test_the_dispatch_rule_both_ways(cluster: Cluster, emu: EmulatorControl) -> None:
    url = cluster.gateway_url
    status, created = await call(url, "POST", "/api/conversations", {"title": "D", "model": MODEL})
    conv_id = created["conversation_id"]
    # A conversation id and no messages: a conversation message, refused in llama-chat's shape
    # when its message is missing (it used to be answered 200 with an empty reply).
    status, refused = await call(
        url, "POST", "/api/chat", {"conversation_id": conv_id, "model": MODEL}
    )
    assert status == 400
    assert (refused["code"], refused["field"], refused["success"]) == (
        "VALIDATION_ERROR",
        "message",
        False,
    )
    # With `messages`, even empty, the body is Ollama's: the load idiom and a plain chat.
    status, loaded = await call(
        url, "POST", "/api/chat", {"model": MODEL, "messages": [], "conversation_id": conv_id}
    )
    assert status == 200, loaded
    assert (loaded["done_reason"], loaded["message"]["content"]) == ("load", "")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "plain"}],
        "stream": False,
        "conversation_id": conv_id,
    }
    status, native = await call(url, "POST", "/api/chat", body)
    assert status == 200 and native["message"]["content"] == expected_reply("plain")
    # Neither touched the conversation.
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert detail["messages"] == []
    # Ollama's errors stay Ollama's.
    status, error = await call(url, "POST", "/api/chat", {"messages": []})
    assert (status, error) == (400, {"error": "model is required"})


async def queued_jobs(cluster: Cluster) -> int:
    _, health = await call(cluster.gateway_url, "GET", "/health")
    return int(health["queue"]["waiting"])


@dataclass
class Busy:
    session: aiohttp.ClientSession
    running: asyncio.Task[aiohttp.ClientResponse]


async def hold_the_lane(
    emu: EmulatorControl, cluster: Cluster, session: aiohttp.ClientSession
) -> Busy:
    """An Ollama chat the emulator holds at its gate: whatever comes next waits in the lane."""
    await emu.hold()
    running = asyncio.create_task(
        session.post(
            f"{cluster.gateway_url}/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "busy"}],
                "stream": False,
            },
        )
    )
    await emu.wait(held=1)
    return Busy(session, running)


async def test_a_streamed_message_waits_in_the_queue_and_is_told_where(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    url = cluster.gateway_url
    status, created = await call(url, "POST", "/api/conversations", {"title": "S", "model": MODEL})
    conv_id = created["conversation_id"]
    async with aiohttp.ClientSession() as session:
        busy = await hold_the_lane(emu, cluster, session)
        try:
            body = {"conversation_id": conv_id, "message": "stream me", "stream": True}
            async with session.post(f"{url}/api/chat", json=body) as response:
                assert response.status == 200
                assert response.content_type == "application/x-ndjson"
                first = orjson.loads(await response.content.readline())
                assert first["type"] == "queue" and first["done"] is False
                assert first["queue_info"]["position"] == 1
                assert first["conversation_id"] == conv_id
                await emu.release()
                lines = [first] + [
                    orjson.loads(line) async for line in response.content if line.strip()
                ]
        finally:
            await emu.release()
            (await busy.running).close()
    kinds = [line["type"] for line in lines]
    assert kinds[-1] == "done" and set(kinds) == {"queue", "token", "done"}
    assert "".join(line["token"] for line in lines if line["type"] == "token") == expected_reply(
        "stream me"
    )
    final = lines[-1]
    assert set(final) == CHAT_ANSWER | {"type", "done"}
    assert final["response"] == expected_reply("stream me")
    assert final["queue_info"]["position"] == 1
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert status == 200, detail
    assert [m["content"] for m in detail["messages"]] == ["stream me", expected_reply("stream me")]


async def test_a_queued_message_whose_client_leaves_is_cancelled(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    url = cluster.gateway_url
    status, created = await call(url, "POST", "/api/conversations", {"title": "C", "model": MODEL})
    conv_id = created["conversation_id"]
    generations = (await emu.stats())["generations"]
    cancelled = 'corral_cancellations_total{stage="queued"}'
    cancelled_before = await metric_value(cluster, cancelled)
    async with aiohttp.ClientSession() as session:
        busy = await hold_the_lane(emu, cluster, session)
        try:
            body = {"conversation_id": conv_id, "message": "never mind", "stream": True}
            async with session.post(f"{url}/api/chat", json=body) as response:
                first = orjson.loads(await response.content.readline())
                assert first["queue_info"]["position"] == 1
                response.close()
            # The scheduler's own count of the cancel, not the queue's length in /health: that
            # comes from a status sent every 2 s, which can still say 0 from before the message
            # was queued (and the held chat was then let go before the cancel had arrived).
            await wait_for_value(cluster, cancelled, cancelled_before + 1)

            async def nothing_queued() -> bool:
                return await queued_jobs(cluster) == 0

            await eventually(nothing_queued, what="the abandoned message leaving the queue")
        finally:
            await emu.release()
            (await busy.running).close()
    # Only the held chat ran; the conversation got nothing.
    assert (await emu.stats())["generations"] == generations + 1
    status, detail = await call(url, "GET", f"/api/conversations/{conv_id}")
    assert status == 200, detail
    assert detail["messages"] == []


# -- with keys: conversations are their owner's ----------------------------------------------


@dataclass
class Keys:
    url: str
    admin: str
    a: str
    b: str


@pytest.fixture(scope="module")
def keyed(new_cluster: ClusterFactory) -> Iterator[tuple[Cluster, str]]:
    with keyed_cluster(new_cluster, "conversations-auth") as keyed:
        yield keyed


@pytest.fixture
async def keys(keyed: tuple[Cluster, str]) -> Keys:
    cluster, admin = keyed
    made = []
    for label in ("A", "B"):
        status, key = await call(
            cluster.gateway_url, "POST", "/admin/keys", {"scope": "user", "label": label}, admin
        )
        assert status == 201, key
        made.append(key["key"])
    return Keys(cluster.gateway_url, admin, made[0], made[1])


async def test_another_users_conversation_is_a_404_everywhere(
    keys: Keys, emu: EmulatorControl
) -> None:
    url, a, b = keys.url, keys.a, keys.b
    status, created = await call(
        url, "POST", "/api/conversations", {"title": "A's", "model": MODEL}, a
    )
    assert status == 201, created
    conv_id = created["conversation_id"]
    status, _ = await call(
        url, "POST", "/api/chat", {"conversation_id": conv_id, "message": "secret zebra"}, a
    )
    assert status == 200
    generations = (await emu.stats())["generations"]

    # B: every route answers exactly as for a conversation that does not exist.
    made_up = 10**12
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/conversations/{}", None),
        ("PUT", "/api/conversations/{}", {"title": "mine now"}),
        ("DELETE", "/api/conversations/{}", None),
        ("GET", "/api/stats/{}", None),
        ("POST", "/api/chat", {"conversation_id": "{}", "message": "let me in"}),
    ]
    for method, path, body in routes:
        answers = []
        for target in (conv_id, made_up):
            sent: dict[str, Any] | None = body
            if body is not None and body.get("conversation_id") == "{}":
                sent = {**body, "conversation_id": target}
            status, answer = await call(url, method, path.format(target), sent, b)
            answers.append(
                (status, {k: v for k, v in answer.items() if k not in ("id", "details")})
            )
        assert answers[0] == answers[1], (method, path, answers)
        assert answers[0][0] == 404 and answers[0][1]["code"] == "NOT_FOUND"
    # Through Ollama's API too.
    native = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
    status, _ = await call(url, "POST", "/api/chat", {**native, "session_id": str(conv_id)}, b)
    assert status == 404
    assert (await emu.stats())["generations"] == generations, "nothing of B's reached the backend"

    # Lists and search: the caller's own; an admin's: everyone's.
    for key, sees in ((a, True), (b, False), (keys.admin, True)):
        status, listing = await call(url, "GET", "/api/conversations", key=key)
        assert status == 200, listing
        assert any(c["id"] == conv_id for c in listing["conversations"]) is sees
        status, found = await call(url, "GET", "/api/search?q=secret%20zebra", key=key)
        assert status == 200, found
        assert any(r["id"] == conv_id for r in found["results"]) is sees

    # A's conversation is untouched, and readable by an admin.
    for key in (a, keys.admin):
        status, detail = await call(url, "GET", f"/api/conversations/{conv_id}", key=key)
        assert status == 200, detail
        assert detail["conversation"]["title"] == "A's"
        assert len(detail["messages"]) == 2
    # Without a key: 401, in llama-chat's shape.
    status, refused = await call(url, "GET", "/api/conversations")
    assert status == 401 and refused["code"] == "UNAUTHORIZED" and refused["success"] is False
