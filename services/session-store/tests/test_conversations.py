"""Llama-chat's conversations over the store, against a real MongoDB-protocol server: numbers from
the counter that skip ids sessions already have (also under concurrent creation), llama-chat's
shapes for a conversation, its messages, stats, the list and search, and the sessions'
ownership rule on every method."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from corral_common.contracts.conversations import conversation_id_of, session_id_of
from corral_common.errors import CorralError, ErrorType
from corral_session_store.conversations import ConversationStore, estimate_tokens
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.sessions import SessionService
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import SessionStore, TurnRecord, WriteOutcome, utcnow

MODEL = "qwen2.5:0.5b"


@pytest.fixture
def conversations(store: SessionStore) -> ConversationStore:
    return ConversationStore(SessionService(store, StaticContextLengths(), SessionStoreSettings()))


async def turn(
    store: SessionStore,
    session_id: str,
    question: str,
    answer: str,
    *,
    request_id: str,
    owner: str | None = None,
    model: str = MODEL,
    minutes: int = 0,
) -> None:
    asked = utcnow() + timedelta(minutes=minutes)
    record = TurnRecord(
        request_id=request_id,
        session_id=session_id,
        model=model,
        kind="chat",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        asked_at=asked,
        answered_at=asked + timedelta(seconds=1),
        owner=owner,
        stats={"prompt_eval_count": 20, "eval_count": 7, "total_duration": 1_250_400_000},
    )
    assert await store.write_turn(record) is WriteOutcome.STORED


def test_ids_map_both_ways() -> None:
    assert session_id_of(42) == "42"
    assert conversation_id_of("42") == 42
    assert conversation_id_of("0") == 0
    # Only a canonical decimal maps to a number: each number names exactly one session.
    for session_id in ("042", "abc", "4a", "1" * 16, "-1", "١٢"):
        assert conversation_id_of(session_id) == session_id


async def test_numbers_count_up_and_skip_ids_sessions_already_have(
    store: SessionStore, conversations: ConversationStore
) -> None:
    # Sessions a client named "2", "3" and "5" through the Ollama API, before any conversation.
    for number in (2, 3, 5):
        await turn(store, str(number), "hi", "hello", request_id=f"r{number}")
    created = [await conversations.create(f"c{i}", MODEL, None) for i in range(4)]
    assert created == [1, 4, 6, 7]
    session = await store.find_session("4")
    assert session is not None
    assert (session["title"], session["model"], session["owner"]) == ("c1", MODEL, None)
    # The sessions that were there are untouched.
    assert (await store.history("5"))["message_count"] == 2


async def test_concurrent_creation_never_shares_a_number(
    store: SessionStore, conversations: ConversationStore
) -> None:
    await turn(store, "3", "hi", "hello", request_id="r3")
    created = await asyncio.gather(*(conversations.create("c", MODEL, None) for _ in range(20)))
    assert len(set(created)) == 20
    assert 3 not in created
    listing = await conversations.list(500, 0, None)
    assert len(listing["conversations"]) == 21


async def test_a_conversation_in_the_seeds_shape(
    store: SessionStore, conversations: ConversationStore
) -> None:
    number = await conversations.create("Python Development Help", MODEL, "alice")
    sid = session_id_of(number)
    await turn(
        store, sid, "How do I make a venv?", "Use python -m venv.", request_id="a", owner="alice"
    )
    await turn(
        store,
        sid,
        "And activate it?",
        "source .venv/bin/activate",
        request_id="b",
        owner="alice",
        minutes=1,
    )

    detail = await conversations.detail(sid, "alice")
    assert set(detail) == {"conversation", "messages", "stats"}
    assert detail["conversation"]["id"] == number
    assert set(detail["conversation"]) == {"id", "title", "model", "created_at", "updated_at"}
    assert detail["conversation"]["title"] == "Python Development Help"
    assert detail["conversation"]["model"] == MODEL
    messages = detail["messages"]
    assert [m["id"] for m in messages] == [1, 2, 3, 4]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    for message in messages:
        assert set(message) == {
            "id",
            "conversation_id",
            "role",
            "content",
            "model",
            "timestamp",
            "response_time_ms",
            "estimated_tokens",
        }
        assert message["conversation_id"] == number
        assert message["timestamp"].endswith("Z")
    user, answer = messages[0], messages[1]
    assert (user["model"], user["response_time_ms"]) == (None, None)
    assert user["estimated_tokens"] == estimate_tokens("How do I make a venv?")
    assert (answer["model"], answer["response_time_ms"], answer["estimated_tokens"]) == (
        MODEL,
        1250,
        7,
    )
    assert detail["stats"] == {
        "total_messages": 4,
        "assistant_messages": 2,
        "avg_response_time": 1250.0,
        "total_tokens": sum(m["estimated_tokens"] for m in messages),
    }

    stats = await conversations.stats(sid, "alice")
    assert stats["summary"] == detail["stats"]
    assert [r["role"] for r in stats["by_role"]] == ["user", "assistant"]
    user_row, answer_row = stats["by_role"]
    assert user_row == {
        "role": "user",
        "count": 2,
        "avg_length": round((len("How do I make a venv?") + len("And activate it?")) / 2, 1),
        "total_tokens": messages[0]["estimated_tokens"] + messages[2]["estimated_tokens"],
        "avg_response_time": None,
    }
    assert (answer_row["count"], answer_row["total_tokens"], answer_row["avg_response_time"]) == (
        2,
        14,
        1250.0,
    )


async def test_an_empty_conversation(store: SessionStore, conversations: ConversationStore) -> None:
    number = await conversations.create("New", MODEL, None)
    detail = await conversations.detail(session_id_of(number), None)
    assert detail["messages"] == []
    assert detail["stats"] == {
        "total_messages": 0,
        "assistant_messages": 0,
        "avg_response_time": None,
        "total_tokens": 0,
    }
    assert await conversations.stats(session_id_of(number), None) == {
        "summary": detail["stats"],
        "by_role": [],
    }
    described = await conversations.describe(session_id_of(number), None)
    assert described == detail["conversation"]
    assert described["created_at"] == described["updated_at"]


async def test_a_session_the_ollama_api_started_is_a_conversation_too(
    store: SessionStore, conversations: ConversationStore
) -> None:
    await turn(store, "chat-abc", "hi", "hello", request_id="r1", model="llama3.2")
    await turn(store, "chat-abc", "hi", "hello", request_id="r2", model="phi3", minutes=1)
    described = await conversations.describe("chat-abc", None)
    assert described["id"] == "chat-abc"
    assert described["title"] == "hi"  # the session's own title, from its first message
    assert described["model"] == "phi3"  # no model of its own: the last one it used
    messages = (await conversations.detail("chat-abc", None))["messages"]
    assert [m["model"] for m in messages] == [None, "llama3.2", None, "phi3"]


async def test_the_list_is_newest_first_and_paged(
    store: SessionStore, conversations: ConversationStore
) -> None:
    first = await conversations.create("first", MODEL, None)
    second = await conversations.create("second", MODEL, None)
    await turn(store, session_id_of(first), "later", "yes", request_id="r1", minutes=5)
    listing = await conversations.list(500, 0, None)
    assert [c["id"] for c in listing["conversations"]] == [first, second]
    assert [c["id"] for c in (await conversations.list(1, 1, None))["conversations"]] == [second]


async def test_search_adds_the_seeds_fields(
    store: SessionStore, conversations: ConversationStore
) -> None:
    number = await conversations.create("AI", MODEL, None)
    sid = session_id_of(number)
    await turn(store, sid, "what is machine learning?", "Machine learning is ...", request_id="r1")
    found = await conversations.search("machine learning", 50, None, time_limit_ms=2000)
    assert (found["query"], found["count"], found["partial"]) == ("machine learning", 2, False)
    by_role = {r["role"]: r for r in found["results"]}
    answer, question = by_role["assistant"], by_role["user"]
    seed = {
        "id",
        "title",
        "model",
        "updated_at",
        "content",
        "role",
        "timestamp",
        "response_time_ms",
        "estimated_tokens",
    }
    for result in found["results"]:
        assert set(result) >= seed | {"session_id", "last_activity", "request_id"}
        assert result["id"] == number
        assert result["session_id"] == sid
        assert result["updated_at"] == result["last_activity"]
    assert (answer["response_time_ms"], answer["estimated_tokens"]) == (1250, 7)
    assert question["response_time_ms"] is None
    assert question["estimated_tokens"] == estimate_tokens("what is machine learning?")


Call = Any


CALLS = {
    "describe": lambda c, sid, owner: c.describe(sid, owner),
    "detail": lambda c, sid, owner: c.detail(sid, owner),
    "stats": lambda c, sid, owner: c.stats(sid, owner),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_another_owners_conversation_is_a_missing_one(
    store: SessionStore, conversations: ConversationStore, call: str
) -> None:
    number = await conversations.create("mine", MODEL, "alice")
    sid = session_id_of(number)
    await turn(store, sid, "secret plans", "noted", request_id="r1", owner="alice")
    await CALLS[call](conversations, sid, "alice")
    await CALLS[call](conversations, sid, None)  # admins and auth off see everything
    for owner in ("bob",):
        with pytest.raises(CorralError) as refused:
            await CALLS[call](conversations, sid, owner)
        assert refused.value.error_type is ErrorType.SESSION_NOT_FOUND
        with pytest.raises(CorralError) as missing:
            await CALLS[call](conversations, "999999", owner)
        assert missing.value.error_type is refused.value.error_type


async def test_lists_and_searches_cover_the_owners_own(
    store: SessionStore, conversations: ConversationStore
) -> None:
    mine = await conversations.create("mine", MODEL, "alice")
    theirs = await conversations.create("theirs", MODEL, "bob")
    nobodys = await conversations.create("nobody's", MODEL, None)
    for number, owner in ((mine, "alice"), (theirs, "bob"), (nobodys, None)):
        await turn(
            store, session_id_of(number), "zebra", "ok", request_id=f"r{number}", owner=owner
        )

    def ids(listing: dict[str, Any], field: str) -> set[Any]:
        return {item["id"] for item in listing[field]}

    assert ids(await conversations.list(500, 0, "alice"), "conversations") == {mine}
    assert ids(await conversations.list(500, 0, None), "conversations") == {mine, theirs, nobodys}
    found = await conversations.search("zebra", 50, "alice", time_limit_ms=2000)
    assert ids(found, "results") == {mine}
    found = await conversations.search("zebra", 50, None, time_limit_ms=2000)
    assert ids(found, "results") == {mine, theirs, nobodys}
    # What a conversation's creator writes into it through either API stays its own.
    await turn(store, session_id_of(mine), "more", "ok", request_id="r-more", owner="alice")
    assert len((await conversations.detail(session_id_of(mine), "alice"))["messages"]) == 4


async def test_archived_conversations_are_listed_apart(
    store: SessionStore, conversations: ConversationStore
) -> None:
    active = await conversations.create("active", MODEL, None)
    idle = await conversations.create("idle", MODEL, None)
    created = await store.find_session(session_id_of(idle))
    assert created is not None and created["touched_at"] == created["created_at"]
    # The sessions' lifecycle job archives a session by setting `archived_at`.
    await store.sessions.update_one(
        {"_id": session_id_of(idle)}, {"$set": {"archived_at": utcnow()}}
    )
    listing = await conversations.list(500, 0, None)
    assert [c["id"] for c in listing["conversations"]] == [active]
    assert set(listing["conversations"][0]) == {"id", "title", "model", "created_at", "updated_at"}
    archived = (await conversations.list(500, 0, None, archived=True))["conversations"]
    assert [c["id"] for c in archived] == [idle]
    assert archived[0]["archived"] is True and archived[0]["archived_at"].endswith("Z")
    # Still readable, as an archived session is.
    assert (await conversations.describe(session_id_of(idle), None))["archived"] is True
