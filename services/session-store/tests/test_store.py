"""SessionStore over a real MongoDB-protocol server (SecantusDB unless CORRAL_MONGO_URL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.sessions import SessionService
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import SessionStore, TurnRecord, WriteOutcome
from corral_session_store.tokens import TokenEstimator

T0 = datetime(2025, 8, 5, 14, 0, tzinfo=UTC)


def record(
    session_id: str,
    n: int,
    *,
    model: str = "llama3.2",
    request_id: str | None = None,
    owner: str | None = None,
    user: str | None = None,
    system: str | None = None,
    answer: str | None = None,
) -> TurnRecord:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user or f"question {n}"})
    messages.append({"role": "assistant", "content": answer or f"answer {n}"})
    asked = T0 + timedelta(minutes=n)
    return TurnRecord(
        request_id=request_id or new_id(),
        session_id=session_id,
        model=model,
        kind="chat",
        messages=messages,
        asked_at=asked,
        answered_at=asked + timedelta(seconds=2),
        owner=owner,
        stats={
            "prompt_eval_count": 10 * n,
            "eval_count": n,
            "total_duration": 1_500_000_000,
            "waited_ms": 100,
        },
    )


async def test_a_turn_is_one_document_written_once(store: SessionStore) -> None:
    turn = record("s1", 1)
    assert await store.write_turn(turn) is WriteOutcome.STORED
    assert await store.write_turn(turn) is WriteOutcome.DUPLICATE
    assert await store.turns.count_documents({}) == 1
    doc = await store.turns.find_one({"_id": turn.request_id})
    assert doc is not None
    assert [m["role"] for m in doc["messages"]] == ["user", "assistant"]
    assert doc["seq"] == 1 and doc["message_count"] == 2
    session = await store.sessions.find_one({"_id": "s1"})
    assert session is not None
    assert session["turn_seq"] == 1  # the duplicate took no sequence number
    assert session["title"] == "question 1"
    assert session["created_at"] == turn.asked_at
    assert session["last_activity"] == turn.answered_at


async def test_twenty_concurrent_turns_all_stored_with_distinct_seqs(
    store: SessionStore,
) -> None:
    turns = [record("busy", n) for n in range(1, 21)]
    outcomes = await asyncio.gather(*(store.write_turn(t) for t in turns))
    assert outcomes == [WriteOutcome.STORED] * 20
    docs = await store.turns.find({"session_id": "busy"}, sort=[("seq", 1)]).to_list()
    seqs = [d["seq"] for d in docs]
    # Distinct and ordered; not necessarily gapless (SecantusDB's racing upserts can hand out
    # a number without returning it, so the writer takes the next one).
    assert len(set(seqs)) == 20 and seqs == sorted(seqs)
    assert {d["_id"] for d in docs} == {t.request_id for t in turns}
    history = await store.history("busy")
    assert history["message_count"] == 40


async def test_sequential_turns_keep_their_order(store: SessionStore) -> None:
    for n in range(1, 21):
        await store.write_turn(record("ordered", n))
    history = await store.history("ordered")
    users = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert users == [f"question {n}" for n in range(1, 21)]


async def test_per_model_histories_are_separate(store: SessionStore) -> None:
    await store.write_turn(record("s", 1, model="llama3.2", user="my name is Alice"))
    await store.write_turn(record("s", 2, model="qwen2.5:0.5b", user="hello qwen"))
    await store.write_turn(record("s", 3, model="llama3.2", user="what is my name?"))
    llama = await store.history("s", model="llama3.2")
    assert [m["content"] for m in llama["messages"] if m["role"] == "user"] == [
        "my name is Alice",
        "what is my name?",
    ]
    assert all("model" not in m for m in llama["messages"])
    qwen = await store.history("s", model="qwen2.5:0.5b")
    assert qwen["message_count"] == 2
    everything = await store.history("s")
    assert [m["model"] for m in everything["messages"]] == [
        "llama3.2",
        "llama3.2",
        "qwen2.5:0.5b",
        "qwen2.5:0.5b",
        "llama3.2",
        "llama3.2",
    ]
    window = await store.history_window("s", "qwen2.5:0.5b", 10_000, TokenEstimator())
    assert window.turns == [
        [{"role": "user", "content": "hello qwen"}, {"role": "assistant", "content": "answer 2"}]
    ]


async def test_history_has_the_seed_shape(store: SessionStore) -> None:
    await store.write_turn(record("shape", 1))
    history = await store.history("shape")
    assert set(history) == {
        "session_id",
        "created_at",
        "last_activity",
        "message_count",
        "messages",
    }
    assert history["session_id"] == "shape"
    assert history["created_at"] == "2025-08-05T14:01:00.000Z"
    assert history["last_activity"] == "2025-08-05T14:01:02.000Z"
    assert history["messages"][0] == {
        "role": "user",
        "content": "question 1",
        "timestamp": "2025-08-05T14:01:00.000Z",
        "model": "llama3.2",
    }
    assert history["messages"][1]["timestamp"] == "2025-08-05T14:01:02.000Z"


async def test_history_window_reads_only_what_can_fit(store: SessionStore) -> None:
    await store.write_turn(record("w", 1, system="be brief"))
    for n in range(2, 41):
        await store.write_turn(record("w", n))
    est = TokenEstimator()
    window = await store.history_window("w", "llama3.2", 60, est)
    assert window.system == {"role": "system", "content": "be brief"}
    assert len(window.turns) < 40
    assert window.older_turns == 40 - len(window.turns)
    assert window.turns[-1][0]["content"] == "question 40"


async def test_unknown_session_is_404(store: SessionStore) -> None:
    for call in (
        store.history("nope"),
        store.rename("nope", "x"),
        store.delete("nope"),
        store.stats("nope"),
    ):
        with pytest.raises(CorralError) as info:
            await call
        assert info.value.error_type is ErrorType.SESSION_NOT_FOUND
        assert info.value.status == 404


async def test_list_rename_delete(store: SessionStore) -> None:
    for n, sid in enumerate(["a", "b", "c"], start=1):
        await store.write_turn(record(sid, n))
    await store.write_turn(record("a", 9, model="other"))
    listing = await store.list_sessions(limit=2, offset=0)
    assert listing["total"] == 3
    assert [s["session_id"] for s in listing["sessions"]] == ["a", "c"]  # newest activity first
    assert listing["sessions"][0]["message_count"] == 4
    assert sorted(listing["sessions"][0]["models"]) == ["llama3.2", "other"]
    page2 = await store.list_sessions(limit=2, offset=2)
    assert [s["session_id"] for s in page2["sessions"]] == ["b"]

    renamed = await store.rename("b", "Trip planning")
    assert renamed["title"] == "Trip planning"
    assert (await store.list_sessions(10, 0))["sessions"][2]["title"] == "Trip planning"

    deleted = await store.delete("a")
    assert deleted == {"session_id": "a", "deleted": True, "turns_deleted": 2}
    assert await store.turns.count_documents({"session_id": "a"}) == 0
    with pytest.raises(CorralError):
        await store.history("a")
    assert (await store.list_sessions(10, 0))["total"] == 2


async def test_search_is_case_insensitive_and_literal(store: SessionStore) -> None:
    await store.write_turn(record("s1", 1, user="Tell me about Machine Learning"))
    await store.write_turn(record("s2", 2, answer="machine learning (ML) is... 1+1=2"))
    await store.write_turn(record("s3", 3, user="nothing here"))
    found = await store.search("MACHINE learning", 10)
    assert found["count"] == 2
    assert {(r["session_id"], r["role"]) for r in found["results"]} == {
        ("s1", "user"),
        ("s2", "assistant"),
    }
    assert found["results"][0]["session_id"] == "s2"  # newest first
    assert found["results"][0]["response_time_ms"] == 1500.0
    # Regex metacharacters are matched literally.
    assert (await store.search("(ML)", 10))["count"] == 1
    assert (await store.search("1+1", 10))["count"] == 1
    assert (await store.search(".*", 10))["count"] == 0
    assert (await store.search("learning", 1))["count"] == 1


async def test_stats(store: SessionStore) -> None:
    await store.write_turn(record("st", 1, system="sys"))
    await store.write_turn(record("st", 2, model="other"))
    stats = await store.stats("st")
    assert stats["summary"] == {
        "total_messages": 5,
        "turns": 2,
        "user_messages": 2,
        "assistant_messages": 2,
        "prompt_tokens": 30,
        "completion_tokens": 3,
        "total_tokens": 33,
        "avg_response_time_ms": 1500.0,
        "avg_wait_ms": 100.0,
    }
    assert [r["role"] for r in stats["by_role"]] == ["assistant", "system", "user"]
    assert [(m["model"], m["turns"]) for m in stats["by_model"]] == [("llama3.2", 1), ("other", 1)]


# -- ownership: strict with an owner, everything without one ----------------------------


Call = Callable[[SessionStore, str, str | None], Awaitable[Any]]


async def assemble(store: SessionStore, session_id: str, owner: str | None) -> Any:
    service = SessionService(store, StaticContextLengths(), SessionStoreSettings())
    return await service.assemble(
        session_id=session_id,
        model="llama3.2",
        kind="chat",
        messages=[{"role": "user", "content": "and now?"}],
        options={},
        owner=owner,
    )


CALLS: dict[str, Call] = {
    "history": lambda store, sid, owner: store.history(sid, owner=owner),
    "history of a model": lambda store, sid, owner: store.history(sid, "llama3.2", owner),
    "stats": lambda store, sid, owner: store.stats(sid, owner),
    "rename": lambda store, sid, owner: store.rename(sid, "taken over", owner),
    "delete": lambda store, sid, owner: store.delete(sid, owner),
    "assemble": assemble,
}


@pytest.fixture
async def sessions(store: SessionStore) -> SessionStore:
    """`alices` (owned by alice) and `open` (owned by nobody), one turn each."""
    for turn in (
        record("alices", 1, owner="alice", user="secret plan"),
        record("open", 1, user="secret recipe"),
    ):
        assert await store.write_turn(turn) is WriteOutcome.STORED
    return store


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize(("session_id", "owner"), [("alices", "bob"), ("open", "alice")])
async def test_a_session_not_the_callers_is_a_missing_one(
    sessions: SessionStore, call: Call, session_id: str, owner: str
) -> None:
    with pytest.raises(CorralError) as refused:
        await call(sessions, session_id, owner)
    with pytest.raises(CorralError) as missing:
        await sessions.history("never-used", owner=owner)
    for error in (refused.value, missing.value):
        assert error.error_type is ErrorType.SESSION_NOT_FOUND and error.status == 404
    # The same words but for the id: nothing tells "someone else's" from "no such session".
    assert str(refused.value).replace(session_id, "ID") == str(missing.value).replace(
        "never-used", "ID"
    )
    assert refused.value.details == {"session_id": session_id}
    # Nothing changed.
    session = await sessions.sessions.find_one({"_id": session_id})
    assert session is not None and session["title"] != "taken over"
    assert await sessions.turns.count_documents({"session_id": session_id}) == 1


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize(
    ("session_id", "owner"), [("alices", "alice"), ("alices", None), ("open", None)]
)
async def test_the_owner_and_the_unscoped_view_reach_the_session(
    sessions: SessionStore, call: Call, session_id: str, owner: str | None
) -> None:
    await call(sessions, session_id, owner)


async def test_a_chat_with_a_new_id_is_a_new_session(sessions: SessionStore) -> None:
    assembled = await assemble(sessions, "fresh", "bob")
    assert assembled["messages"] == [{"role": "user", "content": "and now?"}]
    assert await sessions.write_turn(record("fresh", 1, owner="bob")) is WriteOutcome.STORED
    assert (await sessions.history("fresh", owner="bob"))["message_count"] == 2


async def test_lists_and_searches_hold_only_the_callers_sessions(
    sessions: SessionStore,
) -> None:
    await sessions.write_turn(record("bobs", 1, owner="bob", user="secret lair"))
    listed = await sessions.list_sessions(10, 0, owner="bob")
    assert [s["session_id"] for s in listed["sessions"]] == ["bobs"] and listed["total"] == 1
    found = await sessions.search("secret", 10, owner="bob")
    assert [r["session_id"] for r in found["results"]] == ["bobs"]
    assert (await sessions.list_sessions(10, 0, owner="carol"))["total"] == 0
    assert (await sessions.search("secret", 10, owner="carol"))["count"] == 0
    # Unscoped: everyone's, the unowned session included.
    assert (await sessions.list_sessions(10, 0))["total"] == 3
    assert (await sessions.search("secret", 10))["count"] == 3


async def test_turns_land_only_in_their_owners_sessions(sessions: SessionStore) -> None:
    # Another owner's turn, an owned turn into an unowned session, an unowned turn into an
    # owned one: none is written, and no sequence number is taken.
    assert await sessions.write_turn(record("alices", 2, owner="bob")) is WriteOutcome.REJECTED
    assert await sessions.write_turn(record("open", 2, owner="bob")) is WriteOutcome.REJECTED
    assert await sessions.write_turn(record("alices", 3)) is WriteOutcome.REJECTED
    for session_id, owner in (("alices", "alice"), ("open", None)):
        session = await sessions.sessions.find_one({"_id": session_id})
        assert session is not None
        assert session.get("owner") == owner and session["turn_seq"] == 1
        assert await sessions.turns.count_documents({"session_id": session_id}) == 1
    assert await sessions.write_turn(record("alices", 4, owner="alice")) is WriteOutcome.STORED
    assert await sessions.write_turn(record("open", 4)) is WriteOutcome.STORED


async def test_calibration_round_trip(store: SessionStore) -> None:
    from corral_session_store.tokens import Calibration

    await store.save_calibration("llama3.2", Calibration(1.3, 7))
    loaded = await store.load_calibrations()
    assert loaded["llama3.2"] == Calibration(1.3, 7)
