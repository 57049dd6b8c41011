"""The session store over a real RabbitMQ and a real MongoDB-protocol server (SecantusDB unless
CORRAL_MONGO_URL): `done` events on `corral.events` become stored turns, and the RPC methods
answer through `corral.rpc`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.broker import Broker, Unroutable, encode
from corral_common.contracts.model_manager import MODEL_MANAGER, ModelInfo
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.messages import Done
from corral_common.rpc import RpcClient, RpcServer
from corral_common.settings import CorralSettings
from corral_common.topology import event_key, event_route
from corral_devstack.mongo import SecantusNode
from corral_session_store.app import create_app
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document
from tests.polling import eventually

STORE = "session-store"


@dataclass
class Harness:
    server: TestServer
    broker: Broker
    rpc: RpcClient
    db: AsyncDatabase[Document]

    async def publish_done(self, done: Done, gateway: str = "gw1") -> None:
        """As a scheduler publishes it: routed as `turn` when it carries a session."""
        route = event_route("done", done.session_id)
        await self.broker.publish_event(
            event_key(gateway, done.request_id, route), encode(done), durable=True
        )

    async def call(self, method: str, **params: Any) -> Any:
        return await self.rpc.call_raw(STORE, method, **params)

    async def turns(self, session_id: str) -> list[Document]:
        return await self.db["turns"].find({"session_id": session_id}, sort=[("seq", 1)]).to_list()


def done(
    session_id: str | None,
    user: str,
    answer: str,
    *,
    model: str = "llama3.2",
    request_id: str | None = None,
    system: str | None = None,
    prompt_eval_count: int = 20,
) -> Done:
    turn = [{"role": "user", "content": user}]
    if system is not None:
        turn.insert(0, {"role": "system", "content": system})
    return Done(
        request_id=request_id or new_id(),
        token_batches=1,
        final={
            "model": model,
            "created_at": "2025-08-05T14:30:00.123456789Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_234_000_000,
            "prompt_eval_count": prompt_eval_count,
            "eval_count": 7,
        },
        text=answer,
        waited_ms=25,
        model=model,
        session_id=session_id,
        turn=turn,
    )


async def start_harness(amqp_url: str, mongo_url: str, **settings: Any) -> Harness:
    database = f"corral_it_{new_id()[:12]}"
    app = create_app(
        SessionStoreSettings(
            amqp_url=amqp_url, mongo_url=mongo_url, mongo_database=database, **settings
        ),
        context_lengths=StaticContextLengths({"tiny": 256}),
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    await broker.start()
    rpc = RpcClient(broker, timeout_s=5)
    await rpc.start()
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    return Harness(server, broker, rpc, client[database])


async def stop_harness(harness: Harness) -> None:
    await harness.rpc.close()
    await harness.broker.close()
    await harness.server.close()
    client = harness.db.client
    await client.drop_database(harness.db.name)
    await client.close()


@pytest.fixture
async def store(fresh_broker: Callable[[], str], mongo_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(fresh_broker(), mongo_url)
    yield harness
    await stop_harness(harness)


async def test_done_events_are_stored_in_arrival_order_once(store: Harness) -> None:
    events = [done("busy", f"question {i}", f"answer {i}") for i in range(20)]
    for event in events:
        await store.publish_done(event)
    # A redelivered duplicate, then a marker: the session's events are applied in order, so
    # once the marker is stored the duplicate has been handled.
    await store.publish_done(events[4])
    # An event without a session is routed `done`, which the store's queue does not bind:
    # with no gateway here, no queue takes it at all.
    with pytest.raises(Unroutable):
        await store.publish_done(done(None, "no session", "ignored"))
    await store.publish_done(done("busy", "marker", "last"))

    async def all_there() -> bool:
        return len(await store.turns("busy")) == 21

    await eventually(all_there, what="21 stored turns")
    turns = await store.turns("busy")
    assert [t["messages"][0]["content"] for t in turns] == [
        *(f"question {i}" for i in range(20)),
        "marker",
    ]
    # The duplicate came as a fresh delivery, so the store took a number for it before the
    # insert's unique id refused it (it looks first only on a redelivery): a hole before the
    # marker, which the tallies account for (docs/session-store.md, "holes").
    assert [t["seq"] for t in turns] == [*range(1, 21), 22]
    assert turns[0]["_id"] == events[0].request_id
    assert turns[0]["messages"][1] == {"role": "assistant", "content": "answer 0"}
    assert turns[0]["stats"] == {
        "prompt_eval_count": 20,
        "eval_count": 7,
        "total_duration": 1_234_000_000,
        "done_reason": "stop",
        "waited_ms": 25,
    }
    assert await store.db["turns"].count_documents({}) == 21

    history = await store.call("history", session_id="busy")
    assert history["message_count"] == 42
    assert history["messages"][0]["timestamp"] == "2025-08-05T14:29:58.864Z"
    assert history["messages"][1]["timestamp"] == "2025-08-05T14:30:00.123Z"


async def test_concurrent_sessions_each_keep_their_order(store: Harness) -> None:
    sessions = [f"s{n}" for n in range(5)]
    await asyncio.gather(
        *(
            _publish_all(store, [done(sid, f"{sid} q{i}", "a") for i in range(8)])
            for sid in sessions
        )
    )

    async def all_there() -> bool:
        return await store.db["turns"].count_documents({}) == 40

    await eventually(all_there, what="40 stored turns")
    for sid in sessions:
        contents = [t["messages"][0]["content"] for t in await store.turns(sid)]
        assert contents == [f"{sid} q{i}" for i in range(8)]


async def _publish_all(store: Harness, events: list[Done]) -> None:
    for event in events:
        await store.publish_done(event)


async def test_assemble_remembers_per_model_and_truncates_a_tiny_context(store: Harness) -> None:
    first = await store.call(
        "assemble",
        session_id="chat",
        model="llama3.2",
        kind="chat",
        messages=[{"role": "user", "content": "My name is Alice"}],
        options={},
        owner=None,
    )
    assert first["messages"] == [{"role": "user", "content": "My name is Alice"}]
    assert first["context_info"]["truncated"] is False
    await store.publish_done(done("chat", "My name is Alice", "Hello Alice!", system="Be kind."))
    await store.publish_done(done("chat", "Hi other model", "Hi!", model="tiny"))

    async def stored() -> bool:
        return len(await store.turns("chat")) == 2

    await eventually(stored, what="two turns")
    second = await store.call(
        "assemble",
        session_id="chat",
        model="llama3.2",
        kind="chat",
        messages=[{"role": "user", "content": "What is my name?"}],
    )
    assert second["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "My name is Alice"},
        {"role": "assistant", "content": "Hello Alice!"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert second["context_info"] == {
        "truncated": False,
        "messages_used": 4,
        "tokens_used": second["context_info"]["tokens_used"],
        "turns_dropped": 0,
    }
    assert second["context_length"] == 4096

    # The tiny model (256 tokens) has its own history; fill it so old turns must go.
    for i in range(12):
        await store.publish_done(
            done("chat", f"tiny question {i} " + "x" * 80, "y" * 80, model="tiny")
        )

    async def filled() -> bool:
        return len(await store.turns("chat")) == 14

    await eventually(filled, what="the tiny model's turns")
    tiny = await store.call(
        "assemble",
        session_id="chat",
        model="tiny",
        messages=[
            {"role": "system", "content": "Short answers."},
            {"role": "user", "content": "?"},
        ],
    )
    info = tiny["context_info"]
    assert tiny["context_length"] == 256
    assert info["truncated"] is True
    assert info["turns_dropped"] >= 8
    assert info["tokens_used"] <= 256 - 64
    assert tiny["messages"][0] == {"role": "system", "content": "Short answers."}
    assert tiny["messages"][-2]["content"] == "y" * 80  # the newest turn is kept
    assert all("Alice" not in str(m) for m in tiny["messages"])

    # num_ctx from the client overrides the model's window.
    wide = await store.call(
        "assemble",
        session_id="chat",
        model="tiny",
        messages=[{"role": "user", "content": "?"}],
        options={"num_ctx": 8192},
    )
    assert wide["context_info"]["turns_dropped"] == 0

    with pytest.raises(CorralError) as too_big:
        await store.call(
            "assemble",
            session_id="chat",
            model="tiny",
            messages=[{"role": "user", "content": "z" * 5000}],
        )
    assert too_big.value.error_type is ErrorType.CONTEXT_LIMIT_EXCEEDED
    assert too_big.value.status == 413


async def test_session_methods_over_rpc(store: Harness) -> None:
    await store.publish_done(done("one", "Tell me about Machine Learning", "It learns."))
    await store.publish_done(done("two", "hello", "hi", model="qwen2.5:0.5b"))

    async def stored() -> bool:
        return await store.db["turns"].count_documents({}) == 2

    await eventually(stored, what="two sessions")
    listing = await store.call("list", limit=10, offset=0)
    assert listing["total"] == 2
    assert {s["session_id"] for s in listing["sessions"]} == {"one", "two"}
    assert set(listing["sessions"][0]) == {
        "session_id",
        "title",
        "created_at",
        "last_activity",
        "message_count",
        "models",
    }
    renamed = await store.call("rename", session_id="one", title="  ML   chat ")
    assert renamed["title"] == "ML chat"
    found = await store.call("search", q="machine LEARNING", limit=5)
    assert found["count"] == 1
    assert found["results"][0]["title"] == "ML chat"
    stats = await store.call("stats", session_id="two")
    assert stats["summary"]["total_messages"] == 2
    assert stats["by_model"][0]["model"] == "qwen2.5:0.5b"
    history = await store.call("history", session_id="two", model="qwen2.5:0.5b")
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert await store.call("delete", session_id="two") == {
        "session_id": "two",
        "deleted": True,
        "turns_deleted": 1,
    }

    missing_calls: list[tuple[str, dict[str, Any]]] = [
        ("history", {"session_id": "two"}),
        ("stats", {"session_id": "missing"}),
        ("rename", {"session_id": "missing", "title": "x"}),
        ("delete", {"session_id": "missing"}),
    ]
    for method, params in missing_calls:
        with pytest.raises(CorralError) as missing:
            await store.call(method, **params)
        assert missing.value.error_type is ErrorType.SESSION_NOT_FOUND, method
        assert missing.value.status == 404

    invalid_calls: list[tuple[str, dict[str, Any], str]] = [
        ("history", {"session_id": "bad.id"}, "session_id"),
        ("history", {"session_id": "x" * 200}, "session_id"),
        ("list", {"limit": 0}, "limit"),
        ("list", {"offset": -1}, "offset"),
        ("rename", {"session_id": "one", "title": "   "}, "title"),
        ("rename", {"session_id": "one", "title": "t" * 201}, "title"),
        ("search", {"q": ""}, "q"),
        ("assemble", {"session_id": "s", "model": "m", "messages": [{"role": "x"}]}, "messages"),
        ("assemble", {"session_id": "s", "model": "", "messages": []}, "model"),
    ]
    for method, params, field in invalid_calls:
        with pytest.raises(CorralError) as invalid:
            await store.call(method, **params)
        assert invalid.value.error_type is ErrorType.INVALID_REQUEST, (method, params)
        assert invalid.value.status == 400
        assert field in invalid.value.message


async def test_calibration_learns_from_done_events(store: Harness) -> None:
    request_id = new_id()
    result = await store.call(
        "assemble",
        session_id="cal",
        model="llama3.2",
        messages=[{"role": "user", "content": "x" * 400}],
        request_id=request_id,
    )
    estimate = result["context_info"]["tokens_used"]
    await store.publish_done(
        done("cal", "x" * 400, "ok", request_id=request_id, prompt_eval_count=estimate * 2)
    )

    async def calibrated() -> bool:
        return await store.db["calibration"].find_one({"_id": "llama3.2"}) is not None

    await eventually(calibrated, what="a calibration sample")
    sample = await store.db["calibration"].find_one({"_id": "llama3.2"})
    assert sample is not None
    assert sample["samples"] == 1
    assert 1.8 < sample["factor"] < 2.2
    turn = (await store.turns("cal"))[0]
    assert turn["estimate"]["raw_tokens"] > 0
    again = await store.call(
        "assemble",
        session_id="new",
        model="llama3.2",
        messages=[{"role": "user", "content": "x" * 400}],
    )
    assert again["context_info"]["tokens_used"] > 1.8 * estimate


async def test_ops_endpoints(store: Harness, mongo_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(store.server.make_url("/health")) as response:
            health = await response.json()
            assert response.status == 200
        async with http.get(store.server.make_url("/ready")) as response:
            assert response.status == 200
        async with http.get(store.server.make_url("/metrics")) as response:
            metrics = await response.text()
    assert health["status"] == "healthy"
    assert health["mongo"]["connected"] is True
    assert health["broker"]["connected"] is True
    assert health["turns"]["consuming"] is True
    if mongo_url.startswith("mongodb://127.0.0.1") and health["mongo"]["secantus"]:
        assert health["mongo"]["server"] == "secantusdb"
        assert health["mongo"]["secantus_version"]
    for name in (
        "corral_turns_written_total",
        "corral_context_truncations_total",
        "corral_context_assembly_seconds",
    ):
        assert name in metrics


async def test_context_length_comes_from_the_model_manager(
    fresh_broker: Callable[[], str], mongo_url: str
) -> None:
    amqp_url = fresh_broker()
    database = f"corral_it_{new_id()[:12]}"
    app = create_app(
        SessionStoreSettings(
            amqp_url=amqp_url,
            mongo_url=mongo_url,
            mongo_database=database,
            model_info_timeout_s=0.3,
        )
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    await broker.start()
    rpc = RpcClient(broker, timeout_s=5)
    await rpc.start()
    try:
        message = [{"role": "user", "content": "hi"}]
        # Nobody serves model-manager yet: the default window, after a short wait.
        started = time.monotonic()
        result = await rpc.call_raw(
            STORE, "assemble", session_id="s", model="big", messages=message
        )
        assert result["context_length"] == 4096
        assert time.monotonic() - started < 3

        asked: list[str] = []

        async def model_info(params: dict[str, Any]) -> Any:
            asked.append(params["model"])
            info = ModelInfo(context_length=512, details={}, capabilities=[], model="small")
            return info.wire()

        manager = RpcServer(
            broker, MODEL_MANAGER.service, {MODEL_MANAGER.model_info.name: model_info}
        )
        await manager.start()
        try:
            for _ in range(3):
                result = await rpc.call_raw(
                    STORE, "assemble", session_id="s", model="small", messages=message
                )
                assert result["context_length"] == 512
            assert asked == ["small"]  # cached
        finally:
            await manager.close()
    finally:
        await rpc.close()
        await broker.close()
        await server.close()
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url)
        await client.drop_database(database)
        await client.close()


async def test_turns_wait_out_a_database_outage(
    fresh_broker: Callable[[], str], tmp_path: Path
) -> None:
    """The database goes away under the consumer: the turn is retried, goes back to the
    queue, and is stored once the database is back. Nothing is lost."""
    node = SecantusNode(tmp_path / "mongo")
    await asyncio.to_thread(node.start)
    harness = await start_harness(fresh_broker(), node.url, turn_retry_s=0.3, mongo_timeout_ms=300)
    try:
        await harness.publish_done(done("outage", "before", "a"))

        async def first() -> bool:
            return len(await harness.turns("outage")) == 1

        await eventually(first, what="the first turn")
        await asyncio.to_thread(node.stop)
        await harness.publish_done(done("outage", "during", "b"))
        from corral_session_store import metrics

        errors = metrics.TURN_WRITE_ERRORS._value.get()

        async def failing() -> bool:
            return bool(metrics.TURN_WRITE_ERRORS._value.get() > errors + 2)

        await eventually(failing, what="failed writes while the database is down")
        await asyncio.to_thread(node.start)

        async def second() -> bool:
            try:
                return len(await harness.turns("outage")) == 2
            except Exception:
                return False

        await eventually(second, within_s=30, what="the turn written after the outage")
        contents = [t["messages"][0]["content"] for t in await harness.turns("outage")]
        assert contents == ["before", "during"]
    finally:
        await stop_harness(harness)
        await asyncio.to_thread(node.close)
