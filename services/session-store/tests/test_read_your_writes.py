"""A chat sent while its session's previous turn is being written finds that turn: context
assembly waits for the session's writes in line in this store (writes.py). Over a real RabbitMQ
and a real MongoDB-protocol server; only the write is held, by a double of the store's
`write_turn` that waits for the test's go-ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp.test_utils import TestServer
from pymongo import AsyncMongoClient

from corral_common.broker import Broker, encode
from corral_common.contracts.session_store import SESSION_STORE, AssembleParams
from corral_common.ids import new_id
from corral_common.messages import Done, Stored
from corral_common.rpc import RpcClient
from corral_common.settings import CorralSettings
from corral_common.timeouts import within
from corral_common.topology import EVENTS_EXCHANGE, TURN_ROUTE, event_key
from corral_session_store.app import SERVICE_CORE, create_app
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document, TurnRecord, WriteOutcome
from corral_session_store.writes import KeyedLocks

WAIT_S = 10.0
GATEWAY_ID = "gw-ryw"


@dataclass
class Harness:
    broker: Broker
    rpc: RpcClient
    stored: asyncio.Queue[Stored]
    # Set when a write reached the database call; the write goes on once `go` is set.
    writing: asyncio.Event
    go: asyncio.Event
    writes: KeyedLocks
    # Set when an assembly is about to wait for its session's writes.
    waiting: asyncio.Event


@pytest.fixture
async def store(amqp_url: str, mongo_url: str) -> AsyncIterator[Harness]:
    database = f"corral_ryw_{new_id()[:12]}"
    settings = SessionStoreSettings(amqp_url=amqp_url, mongo_url=mongo_url, mongo_database=database)
    app = create_app(settings, context_lengths=StaticContextLengths())
    server = TestServer(app)
    await server.start_server()
    writing, go = asyncio.Event(), asyncio.Event()
    service = app[SERVICE_CORE]
    write_turn = service.store.write_turn

    async def held(turn: TurnRecord, *, look_first: bool = True) -> WriteOutcome:
        writing.set()
        await go.wait()
        return await write_turn(turn, look_first=look_first)

    service.store.write_turn = held  # type: ignore[method-assign]
    waiting = asyncio.Event()
    settled = service.writes.settled

    async def watched(key: str, timeout_s: float) -> bool:
        if service.writes.users(key):
            waiting.set()
        return await settled(key, timeout_s)

    service.writes.settled = watched  # type: ignore[method-assign]
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    await broker.start()
    rpc = RpcClient(broker, timeout_s=WAIT_S)
    await rpc.start()
    # What the request's gateway hears: the store's `stored`.
    stored: asyncio.Queue[Stored] = asyncio.Queue()
    channel = await broker.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await channel.get_exchange(EVENTS_EXCHANGE), f"gw.{GATEWAY_ID}.#")

    async def on_event(message: AbstractIncomingMessage) -> None:
        await message.ack()
        stored.put_nowait(Stored.model_validate_json(message.body))

    await queue.consume(on_event)
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    yield Harness(broker, rpc, stored, writing, go, service.writes, waiting)
    go.set()
    await channel.close()
    await rpc.close()
    await broker.close()
    await server.close()
    await client.drop_database(database)
    await client.close()


def done(session_id: str, request_id: str, question: str, answer: str) -> Done:
    return Done(
        request_id=request_id,
        gateway_id=GATEWAY_ID,
        token_batches=1,
        final={"model": "m", "done": True, "prompt_eval_count": 10, "eval_count": 3},
        text=answer,
        waited_ms=0,
        model="m",
        session_id=session_id,
        turn=[{"role": "user", "content": question}],
    )


def assemble(session_id: str, question: str) -> AssembleParams:
    return AssembleParams.model_validate(
        {
            "session_id": session_id,
            "model": "m",
            "kind": "chat",
            "messages": [{"role": "user", "content": question}],
            "request_id": new_id(),
        }
    )


async def test_an_assembly_waits_for_its_sessions_turn_being_written(store: Harness) -> None:
    session_id = new_id()
    first = done(session_id, "ryw-1", "My name is Alice", "Hello Alice")
    await store.broker.publish_event(
        event_key(GATEWAY_ID, first.request_id, TURN_ROUTE), encode(first), durable=True
    )
    # The store has the turn and is writing it: nothing is stored yet.
    await within(store.writing.wait(), WAIT_S)
    assert store.stored.empty()

    # The next chat on the session (its gateway had the answer and let it go).
    next_chat = asyncio.ensure_future(
        store.rpc.call(SESSION_STORE.assemble, assemble(session_id, "What is my name?"))
    )
    # Another session's chat is not held by it.
    other = await store.rpc.call(SESSION_STORE.assemble, assemble(new_id(), "hi"))
    assert [m["content"] for m in other.messages] == ["hi"]
    # The chat waits behind the write (the write holds its session, the assembly is in line).
    await within(store.waiting.wait(), WAIT_S)
    assert store.writes.users(session_id) == 2
    assert not next_chat.done()

    store.go.set()
    assembled = await within(next_chat, WAIT_S)
    assert [m["content"] for m in assembled.messages] == [
        "My name is Alice",
        "Hello Alice",
        "What is my name?",
    ]
    confirmed = await within(store.stored.get(), WAIT_S)
    assert (confirmed.request_id, confirmed.outcome) == ("ryw-1", "stored")


async def test_an_assembly_with_nothing_being_written_does_not_wait(store: Harness) -> None:
    store.go.set()
    session_id = new_id()
    answer: Any = await store.rpc.call(SESSION_STORE.assemble, assemble(session_id, "first"))
    assert [m["content"] for m in answer.messages] == ["first"]
