"""API keys, rate-limit counters and the audit log over a real MongoDB-protocol server
(SecantusDB unless CORRAL_MONGO_URL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import json_util
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.api_keys import display_prefix, generate_key, key_hash
from corral_common.contracts.identity import (
    AuditEntry,
    AuditQuery,
    CounterSpec,
    KeyCreate,
    KeyLimits,
    KeyQuery,
    KeyRef,
)
from corral_common.errors import CorralError, ErrorType
from corral_session_store.counters import own_total
from corral_session_store.identity_rpc import IdentityStore
from corral_session_store.store import Document

MINUTE = 60
DAY = 86_400
# A moment 5 s into a minute (and well inside its day).
T = 1_754_400_000.0 + 5


@pytest.fixture
async def identity(database: AsyncDatabase[Document]) -> IdentityStore:
    identity = IdentityStore(database)
    await identity.ensure_indexes()
    return identity


def new_key(**fields: Any) -> tuple[str, KeyCreate]:
    key = generate_key()
    params = {"scope": "user", **fields}
    return key, KeyCreate(key_hash=key_hash(key), prefix=display_prefix(key), **params)


# -- keys ------------------------------------------------------------------------------------


async def test_a_key_is_stored_as_its_hash_only(identity: IdentityStore) -> None:
    key, params = new_key(
        scope="admin",
        label="ci runner",
        owner="team-a",
        expires_at=T + DAY,
        max_priority="normal",
        limits=KeyLimits(requests_per_minute=10, max_queued=0),
        created_by="operator",
    )
    info = await identity.keys.create(params, now=T)
    assert info.id.startswith("key_") and len(info.id) == 36
    assert info.model_dump() == {
        "id": info.id,
        "prefix": key[:12],
        "scope": "admin",
        "label": "ci runner",
        "owner": "team-a",
        "created_at": T,
        "expires_at": T + DAY,
        "revoked_at": None,
        "max_priority": "normal",
        "limits": {
            "requests_per_minute": 10,
            "tokens_per_minute": None,
            "tokens_per_day": None,
            "max_queued": 0,
        },
        "created_by": "operator",
    }
    assert (await identity.keys.resolve(key_hash(key))) == info
    listed = await identity.keys.list(KeyQuery())
    assert listed.total == 1 and listed.keys == [info]

    stored = await identity.keys.keys.find({}).to_list()
    assert [doc["hash"] for doc in stored] == [key_hash(key)]
    dump = json_util.dumps(stored)
    assert key not in dump and key[len("crl_") :] not in dump
    # Nothing but the display prefix of the secret itself: the hash is never answered either.
    assert key_hash(key) not in info.model_dump_json() + listed.model_dump_json()


async def test_an_unknown_hash_resolves_to_none(identity: IdentityStore) -> None:
    _, params = new_key()
    await identity.keys.create(params)
    assert await identity.keys.resolve(key_hash(generate_key())) is None


async def test_the_same_hash_twice_is_a_conflict(identity: IdentityStore) -> None:
    _, params = new_key()
    await identity.keys.create(params)
    with pytest.raises(CorralError) as info:
        await identity.keys.create(params)
    assert info.value.status == 409
    assert await identity.keys.keys.count_documents({}) == 1


async def test_revoking_keeps_the_first_revocation(identity: IdentityStore) -> None:
    key, params = new_key()
    created = await identity.keys.create(params, now=T)
    revoked, revoked_hash = await identity.keys.revoke(
        KeyRef(key_id=created.id, revoked_by="operator"), now=T + 10
    )
    assert revoked_hash == key_hash(key)
    assert revoked.revoked_at == T + 10
    assert revoked.model_dump() == {**created.model_dump(), "revoked_at": T + 10}
    again, _ = await identity.keys.revoke(KeyRef(key_id=created.id), now=T + 20)
    assert again.revoked_at == T + 10
    stored = await identity.keys.keys.find_one({"_id": created.id})
    assert stored is not None and stored["revoked_by"] == "operator"
    # Still resolvable, as revoked: the gateway refuses it and says why.
    resolved = await identity.keys.resolve(key_hash(key))
    assert resolved is not None and resolved.revoked_at == T + 10


async def test_an_expired_key_resolves_as_it_is(identity: IdentityStore) -> None:
    key, params = new_key(expires_at=T - 1)
    await identity.keys.create(params, now=T - 100)
    resolved = await identity.keys.resolve(key_hash(key))
    assert resolved is not None
    assert resolved.expires_at == T - 1 and resolved.revoked_at is None


async def test_revoking_an_unknown_key_is_404(identity: IdentityStore) -> None:
    with pytest.raises(CorralError) as info:
        await identity.keys.revoke(KeyRef(key_id="key_0123abcd"))
    assert info.value.error_type is ErrorType.KEY_NOT_FOUND
    assert info.value.status == 404
    assert info.value.details == {"key_id": "key_0123abcd"}


async def test_listing_is_newest_first_and_hides_revoked_keys(identity: IdentityStore) -> None:
    ids = []
    for n in range(5):
        _, params = new_key(label=f"key {n}")
        ids.append((await identity.keys.create(params, now=T + n)).id)
    await identity.keys.revoke(KeyRef(key_id=ids[3]))
    live = await identity.keys.list(KeyQuery())
    assert [k.id for k in live.keys] == [ids[4], ids[2], ids[1], ids[0]]
    assert live.total == 4
    everything = await identity.keys.list(KeyQuery(include_revoked=True, limit=2, offset=1))
    assert [k.id for k in everything.keys] == [ids[3], ids[2]]
    assert everything.total == 5


@pytest.mark.parametrize("expires_at", [float("inf"), float("nan"), -1.0, 1e18])
async def test_an_impossible_expiry_is_refused(identity: IdentityStore, expires_at: float) -> None:
    _, params = new_key(expires_at=expires_at)
    with pytest.raises(CorralError) as info:
        await identity.keys.create(params)
    assert info.value.error_type is ErrorType.INVALID_REQUEST
    assert await identity.keys.keys.count_documents({}) == 0


# -- counters --------------------------------------------------------------------------------


def spec(name: str = "requests", window_s: int = MINUTE, add: int = 1) -> CounterSpec:
    return CounterSpec(name=name, window_s=window_s, add=add)


async def test_concurrent_increments_from_two_clients_are_exact(
    identity: IdentityStore, mongo_url: str
) -> None:
    # A second client with a pool of its own: two gateway replicas counting the same subject.
    other: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        replica = IdentityStore(other[identity.counters.counters.database.name])
        results = await asyncio.gather(
            *(
                (identity if n % 2 else replica).counters.count("key:alice", [spec()], T)
                for n in range(50)
            )
        )
    finally:
        await other.close()
    counts = sorted(values[0].count for values in results)
    assert counts == list(range(1, 51))
    [now] = await identity.counters.count("key:alice", [spec(add=0)], T)
    assert now.count == 50
    assert await identity.counters.counters.count_documents({}) == 1


async def test_an_add_between_anothers_update_and_read_leaves_both_their_own_totals(
    identity: IdentityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await identity.counters.count("key:carol", [spec(add=5)], T)
    find_one = identity.counters.counters.find_one
    interleaved: list[int] = []

    async def another_add_first(*args: Any, **kwargs: Any) -> Any:
        if not interleaved:
            interleaved.append(0)
            [value] = await identity.counters.count("key:carol", [spec(add=2)], T)
            interleaved.append(value.count)
        return await find_one(*args, **kwargs)

    monkeypatch.setattr(identity.counters.counters, "find_one", another_add_first)
    [first] = await identity.counters.count("key:carol", [spec(add=3)], T)
    # The first add's update went in before the second's, whose read came first.
    assert (first.count, interleaved[1]) == (8, 10)
    monkeypatch.undo()
    [now] = await identity.counters.count("key:carol", [spec(add=0)], T)
    assert now.count == 10


def test_an_adds_total_is_the_count_less_the_adds_after_it() -> None:
    recent = [{"t": "a", "n": 1}, {"t": "b", "n": 4}, {"t": "c", "n": 2}]
    doc = {"count": 20, "recent": recent}
    assert [own_total(doc, adder) for adder in ("a", "b", "c")] == [14, 18, 20]
    # One no longer among the recent adds gets the count as read: never less than its own.
    assert own_total(doc, "gone") == 20


async def test_a_window_resets_at_its_end(identity: IdentityStore) -> None:
    start = T - 5
    [first] = await identity.counters.count("ip:10.0.0.1", [spec()], start)
    [second] = await identity.counters.count("ip:10.0.0.1", [spec()], start + 59.999)
    assert (first.count, second.count) == (1, 2)
    assert first.reset_at == second.reset_at == start + MINUTE
    [next_window] = await identity.counters.count("ip:10.0.0.1", [spec()], start + MINUTE)
    assert next_window.count == 1 and next_window.reset_at == start + 2 * MINUTE
    # Another subject, or another counter, counts apart.
    [other] = await identity.counters.count("ip:10.0.0.2", [spec()], start)
    assert other.count == 1


async def test_several_counters_in_one_call(identity: IdentityStore) -> None:
    day_start = T // DAY * DAY
    values = await identity.counters.count(
        "key:alice",
        [spec("tokens_minute", MINUTE, 37), spec("tokens_day", DAY, 37), spec("requests")],
        T,
    )
    assert [(v.name, v.count, v.reset_at) for v in values] == [
        ("tokens_minute", 37, T - 5 + MINUTE),
        ("tokens_day", 37, day_start + DAY),
        ("requests", 1, T - 5 + MINUTE),
    ]
    [day] = await identity.counters.count("key:alice", [spec("tokens_day", DAY, 3)], T + 3600)
    assert day.count == 40


async def test_reading_a_counter_writes_nothing(identity: IdentityStore) -> None:
    [value] = await identity.counters.count("key:bob", [spec(add=0)], T)
    assert value.count == 0 and value.reset_at == T - 5 + MINUTE
    assert await identity.counters.counters.count_documents({}) == 0


async def test_an_impossible_now_is_refused(identity: IdentityStore) -> None:
    with pytest.raises(CorralError) as info:
        await identity.counters.count("key:bob", [spec()], float("inf"))
    assert info.value.error_type is ErrorType.INVALID_REQUEST
    assert await identity.counters.counters.count_documents({}) == 0


async def test_purge_deletes_counters_a_window_past_their_end(identity: IdentityStore) -> None:
    start = T - 5
    await identity.counters.count("key:a", [spec()], start - MINUTE)  # the previous minute
    await identity.counters.count("key:a", [spec()], start)  # this minute
    await identity.counters.count("key:a", [spec("tokens_day", DAY)], start)
    # One window past the previous minute's end: it goes, the others stay.
    assert await identity.counters.purge(start + MINUTE) == 1
    names = {
        (doc["name"], doc["window_start"])
        async for doc in identity.counters.counters.find({}, {"name": 1, "window_start": 1})
    }
    assert names == {("requests", start), ("tokens_day", T // DAY * DAY)}
    assert await identity.counters.purge(start + 2 * MINUTE) == 1
    assert await identity.counters.purge(start + 2 * MINUTE) == 0


# -- audit -----------------------------------------------------------------------------------


def entry(actor: str, action: str, at: float | None, **fields: Any) -> AuditEntry:
    return AuditEntry(**{"actor": actor, "action": action, "status": 200, "at": at, **fields})


async def test_audit_records_list_newest_first(identity: IdentityStore) -> None:
    await identity.audit.write(
        entry(
            "operator",
            "POST /admin/keys",
            T,
            status=201,
            target="key_abc",
            ip="127.0.0.1",
            request_id="req-1",
        )
    )
    await identity.audit.write(entry("key_1", "DELETE /admin/keys/{key_id}", T + 2))
    await identity.audit.write(entry("operator", "POST /admin/lanes/{lane}/pause", T + 1))
    listed = await identity.audit.list(AuditQuery())
    assert listed.total == 3
    assert [e["action"] for e in listed.entries] == [
        "DELETE /admin/keys/{key_id}",
        "POST /admin/lanes/{lane}/pause",
        "POST /admin/keys",
    ]
    assert listed.entries[2] == {
        "at": T,
        "actor": "operator",
        "action": "POST /admin/keys",
        "target": "key_abc",
        "status": 201,
        "ip": "127.0.0.1",
        "request_id": "req-1",
    }
    mine = await identity.audit.list(AuditQuery(actor="operator", limit=1, offset=1))
    assert mine.total == 2
    assert [e["at"] for e in mine.entries] == [T]


async def test_an_audit_record_without_a_time_gets_the_stores(identity: IdentityStore) -> None:
    await identity.audit.write(entry("anonymous", "DELETE /api/models", None))
    [record] = (await identity.audit.list(AuditQuery())).entries
    assert record["at"] > T


class Stop(Exception):
    pass


async def test_the_purge_loop_purges_then_waits(identity: IdentityStore) -> None:
    await identity.counters.count("key:a", [spec()], T - DAY)  # long gone by now
    await identity.counters.count("key:a", [spec("requests_day", DAY)], None)  # current
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise Stop

    with pytest.raises(Stop):
        await identity.counters.purge_forever(30.0, sleep)
    assert waits == [30.0]
    assert [doc["name"] async for doc in identity.counters.counters.find({})] == ["requests_day"]
