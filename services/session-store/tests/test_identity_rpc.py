"""The identity methods through the running store: served on `rpc.session-store.identity` over
a real RabbitMQ and a real MongoDB-protocol server, with `KeyChanged` broadcast on
`corral.events`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp.test_utils import TestServer
from pymongo import AsyncMongoClient

from corral_common.api_keys import display_prefix, generate_key, key_hash
from corral_common.broker import Broker
from corral_common.contracts import Empty
from corral_common.contracts.identity import (
    IDENTITY,
    KEYS_CHANGED_KEY,
    AuditEntry,
    AuditQuery,
    CounterSpec,
    CountParams,
    KeyChanged,
    KeyCreate,
    KeyLookup,
    KeyQuery,
    KeyRef,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.rpc import RpcClient, rpc_route
from corral_common.settings import CorralSettings
from corral_common.timeouts import within
from corral_common.topology import EVENTS_EXCHANGE
from corral_devstack.ports import free_port
from corral_session_store.app import create_app
from corral_session_store.identity_rpc import IdentityStore, KeyAnnouncer, identity_methods
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document

WAIT_S = 10.0


@dataclass
class Harness:
    broker: Broker
    rpc: RpcClient
    db: Any
    changes: asyncio.Queue[KeyChanged]


async def connect(amqp_url: str) -> tuple[Broker, RpcClient]:
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    await broker.start()
    rpc = RpcClient(broker, timeout_s=WAIT_S)
    await rpc.start()
    return broker, rpc


@pytest.fixture
async def store(amqp_url: str, mongo_url: str) -> AsyncIterator[Harness]:
    database = f"corral_it_{new_id()[:12]}"
    settings = SessionStoreSettings(amqp_url=amqp_url, mongo_url=mongo_url, mongo_database=database)
    server = TestServer(create_app(settings, context_lengths=StaticContextLengths()))
    await server.start_server()
    broker, rpc = await connect(amqp_url)
    # What a gateway binds: every KeyChanged, as it arrives.
    changes: asyncio.Queue[KeyChanged] = asyncio.Queue()
    channel = await broker.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(await channel.get_exchange(EVENTS_EXCHANGE), KEYS_CHANGED_KEY)

    async def on_change(message: AbstractIncomingMessage) -> None:
        await message.ack()
        changes.put_nowait(KeyChanged.model_validate_json(message.body))

    await queue.consume(on_change)
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    yield Harness(broker, rpc, client[database], changes)
    await channel.close()
    await rpc.close()
    await broker.close()
    await server.close()
    await client.drop_database(database)
    await client.close()


def new_key(**fields: Any) -> tuple[str, KeyCreate]:
    key = generate_key()
    params = {"scope": "user", **fields}
    return key, KeyCreate(key_hash=key_hash(key), prefix=display_prefix(key), **params)


def test_every_identity_method_is_on_the_identity_lane() -> None:
    for name in ("create_key", "list_keys", "revoke_key", "resolve_key", "count", "audit"):
        assert rpc_route("session-store", name) == "session-store.identity"
    assert rpc_route("session-store", "audit_list") == "session-store.identity"


async def test_keys_through_the_store_and_their_broadcasts(store: Harness) -> None:
    key, params = new_key(label="laptop", owner="alice", created_by="operator")
    created = await store.rpc.call(IDENTITY.create_key, params)
    assert created.label == "laptop" and created.owner == "alice" and created.revoked_at is None
    change = await within(store.changes.get(), WAIT_S)
    assert change == KeyChanged(key_id=created.id, key_hash=key_hash(key))

    resolved = await store.rpc.call(IDENTITY.resolve_key, KeyLookup(key_hash=key_hash(key)))
    assert resolved.key == created
    listed = await store.rpc.call(IDENTITY.list_keys, KeyQuery())
    assert listed.keys == [created] and listed.total == 1

    revoked = await store.rpc.call(
        IDENTITY.revoke_key, KeyRef(key_id=created.id, revoked_by="operator")
    )
    assert revoked.revoked_at is not None
    assert await within(store.changes.get(), WAIT_S) == change
    again = await store.rpc.call(IDENTITY.revoke_key, KeyRef(key_id=created.id))
    assert again.revoked_at == revoked.revoked_at
    assert (await store.rpc.call(IDENTITY.list_keys, KeyQuery())).total == 0
    resolved = await store.rpc.call(IDENTITY.resolve_key, KeyLookup(key_hash=key_hash(key)))
    assert resolved.key == revoked
    unknown = await store.rpc.call(IDENTITY.resolve_key, KeyLookup(key_hash="0" * 64))
    assert unknown.key is None

    dump = str(await store.db["api_keys"].find({}).to_list())
    assert key not in dump and key[4:] not in dump


async def test_revoking_an_unknown_key_is_404_over_rpc(store: Harness) -> None:
    with pytest.raises(CorralError) as info:
        await store.rpc.call(IDENTITY.revoke_key, KeyRef(key_id="key_deadbeef"))
    assert info.value.error_type is ErrorType.KEY_NOT_FOUND and info.value.status == 404
    assert store.changes.empty()


async def test_two_gateways_counting_at_once_get_exact_totals(
    store: Harness, amqp_url: str
) -> None:
    broker, rpc = await connect(amqp_url)
    try:
        params = CountParams(
            subject="key:alice",
            counters=[CounterSpec(name="requests", window_s=60, add=1)],
            now=1_754_400_005.0,
        )
        results = await asyncio.gather(
            *((store.rpc if n % 2 else rpc).call(IDENTITY.count, params) for n in range(50))
        )
    finally:
        await rpc.close()
        await broker.close()
    assert sorted(r.counters[0].count for r in results) == list(range(1, 51))
    assert {r.counters[0].reset_at for r in results} == {1_754_400_060.0}
    read = CountParams(
        subject="key:alice",
        counters=[CounterSpec(name="requests", window_s=60)],
        now=1_754_400_059.0,
    )
    assert (await store.rpc.call(IDENTITY.count, read)).counters[0].count == 50


async def test_audit_through_the_store(store: Harness) -> None:
    written = await store.rpc.call(
        IDENTITY.audit,
        AuditEntry(actor="operator", action="POST /admin/keys", status=201, at=1_754_400_000.0),
    )
    assert written == Empty()
    listed = await store.rpc.call(IDENTITY.audit_list, AuditQuery())
    assert listed.total == 1
    assert listed.entries[0]["actor"] == "operator" and listed.entries[0]["status"] == 201


async def test_a_bad_time_is_invalid_request_over_rpc(store: Harness) -> None:
    _, params = new_key(expires_at=1e18)
    with pytest.raises(CorralError) as info:
        await store.rpc.call(IDENTITY.create_key, params)
    assert info.value.error_type is ErrorType.INVALID_REQUEST and info.value.status == 400
    assert await store.db["api_keys"].count_documents({}) == 0


async def test_a_database_that_is_away_is_503(amqp_url: str) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/", serverSelectionTimeoutMS=200
    )
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    try:
        handlers = identity_methods(IdentityStore(client["corral"]), KeyAnnouncer(broker))
        _, params = new_key()
        calls = {
            "create_key": params.wire(),
            "resolve_key": {"key_hash": params.key_hash},
            "count": {"subject": "ip:10.0.0.1", "counters": [{"name": "requests", "window_s": 60}]},
            "audit_list": {},
        }
        for method, wire in calls.items():
            with pytest.raises(CorralError) as info:
                await handlers[method](wire)
            assert info.value.status == 503, method
            assert info.value.error_type is ErrorType.INTERNAL_ERROR
    finally:
        await client.close()


async def test_a_key_is_created_even_when_its_broadcast_fails(
    amqp_url: str, mongo: AsyncMongoClient[Document]
) -> None:
    broker = Broker(CorralSettings(amqp_url=amqp_url), "test")
    await broker.start()
    await broker.close()  # every publish now fails
    database = f"corral_test_{new_id()[:12]}"
    identity = IdentityStore(mongo[database])
    try:
        await identity.ensure_indexes()
        handlers = identity_methods(identity, KeyAnnouncer(broker))
        key, params = new_key()
        created = await handlers["create_key"](params.wire())
        assert created["scope"] == "user"
        revoked = await handlers["revoke_key"]({"key_id": created["id"]})
        assert revoked["revoked_at"] is not None
        resolved = await identity.keys.resolve(key_hash(key))
        assert resolved is not None and resolved.id == created["id"]
    finally:
        await mongo.drop_database(database)
