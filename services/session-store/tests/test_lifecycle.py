"""The session lifecycle over a real MongoDB-protocol server: explicit creation, archiving and
retention (the periodic job, with short settings and a clock it is handed), resuming by chat,
export and import, clearing everything, metadata, the message cap and the fallback system
prompts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_common.contracts.session_store import ImportParams
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.messages import Done
from corral_session_store.lifecycle import LifecycleJob
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.sessions import SessionService
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import EXPORT_FORMAT, SessionStore, TurnRecord, WriteOutcome, utcnow

T0 = datetime(2025, 8, 5, 14, 0, tzinfo=UTC)


def record(
    session_id: str,
    n: int,
    *,
    owner: str | None = None,
    model: str = "llama3.2",
    metadata: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> TurnRecord:
    asked = T0 + timedelta(minutes=n)
    return TurnRecord(
        request_id=request_id or new_id(),
        session_id=session_id,
        model=model,
        kind="chat",
        messages=[
            {"role": "user", "content": f"question {n}"},
            {"role": "assistant", "content": f"answer {n}"},
        ],
        asked_at=asked,
        answered_at=asked + timedelta(seconds=2),
        owner=owner,
        stats={"prompt_eval_count": 10, "eval_count": n, "total_duration": 2_000_000_000},
        metadata=metadata,
    )


def service(store: SessionStore, **settings: Any) -> SessionService:
    return SessionService(store, StaticContextLengths(), SessionStoreSettings(**settings))


async def chat(
    core: SessionService,
    session_id: str,
    text: str = "and now?",
    *,
    owner: str | None = None,
    model: str = "llama3.2",
    **extra: Any,
) -> dict[str, Any]:
    return await core.assemble(
        session_id=session_id,
        model=model,
        kind="chat",
        messages=[{"role": "user", "content": text}],
        options={},
        owner=owner,
        **extra,
    )


def later(seconds: float) -> Any:
    """A clock `seconds` ahead of now, for the lifecycle job."""
    return lambda: utcnow() + timedelta(seconds=seconds)


# -- creating --------------------------------------------------------------------------------


async def test_a_created_session_is_empty_owned_and_named_by_its_first_question(
    store: SessionStore,
) -> None:
    created = await store.create_session("alice", title=None, system_prompt="Be brief.")
    session_id = created["session_id"]
    assert created["message_count"] == 0 and created["models"] == []
    assert created["system_prompt"] == "Be brief."
    listing = await store.list_sessions(10, 0, "alice")
    assert [s["session_id"] for s in listing["sessions"]] == [session_id]
    assert (await store.list_sessions(10, 0, "bob"))["total"] == 0

    # Its first turn goes into it (same owner) and names it; its creation time stays.
    assert await store.write_turn(record(session_id, 1, owner="alice")) is WriteOutcome.STORED
    session = await store.require_session(session_id)
    assert session["title"] == "question 1"
    assert session["turn_seq"] == 1
    assert session["created_at"] < session["touched_at"] + timedelta(seconds=1)
    # Someone else's turn cannot go into it.
    assert await store.write_turn(record(session_id, 2, owner="bob")) is WriteOutcome.REJECTED


async def test_a_title_given_at_creation_is_kept(store: SessionStore) -> None:
    created = await store.create_session(None, title="Trip", system_prompt=None)
    await store.write_turn(record(created["session_id"], 1))
    assert (await store.require_session(created["session_id"]))["title"] == "Trip"
    assert "system_prompt" not in created


# -- archiving and retention -----------------------------------------------------------------


async def test_idle_sessions_are_archived_listed_apart_and_purged_after_retention(
    store: SessionStore,
) -> None:
    await store.write_turn(record("idle", 1))
    await store.write_turn(record("idle", 2))
    await store.write_turn(record("busy", 1))
    job = LifecycleJob(store, archive_after_s=60, retention_s=0, interval_s=1)

    # Nothing has idled yet.
    assert (await job.sweep()).archived == 0
    # A minute later both have; keep "busy" busy first.
    await store.write_turn(record("busy", 2))
    job.clock = later(61)
    await store.sessions.update_one(
        {"_id": "busy"}, {"$set": {"touched_at": utcnow() + timedelta(seconds=30)}}
    )
    result = await job.sweep()
    assert result.archived == 1 and result.purged_sessions == 0

    active = await store.list_sessions(10, 0)
    assert [s["session_id"] for s in active["sessions"]] == ["busy"]
    assert "archived" not in active["sessions"][0]
    archived = await store.list_sessions(10, 0, archived=True)
    assert [s["session_id"] for s in archived["sessions"]] == ["idle"]
    assert archived["sessions"][0]["archived"] is True
    assert archived["sessions"][0]["archived_at"].endswith("Z")
    # Still readable, whole.
    history = await store.history("idle")
    assert history["message_count"] == 4 and history["archived"] is True

    # No retention: kept however long it stays archived.
    job.clock = later(10 * 86_400)
    assert (await job.sweep()).purged_sessions == 0
    # With a retention, deleted with its turns once archived that long (and only then).
    job.retention_s = 3600
    job.clock = later(61 + 3599)
    assert (await job.sweep()).purged_sessions == 0
    job.clock = later(61 + 3601)
    result = await job.sweep()
    assert (result.purged_sessions, result.purged_turns) == (1, 2)
    assert await store.find_session("idle") is None
    assert await store.turns.count_documents({"session_id": "idle"}) == 0
    # "busy" idled meanwhile and was archived by the same sweeps, not yet purged.
    assert (await store.require_session("busy")).get("archived_at") is not None


async def test_sessions_written_before_touched_at_are_archived_by_last_activity(
    store: SessionStore,
) -> None:
    await store.write_turn(record("old", 1))
    await store.sessions.update_one({"_id": "old"}, {"$unset": {"touched_at": ""}})
    job = LifecycleJob(store, archive_after_s=60, retention_s=0, interval_s=1)
    # last_activity is T0 + 1 min (2025): long idle.
    assert (await job.sweep()).archived == 1


async def test_a_chat_resumes_an_archived_session_with_its_history(store: SessionStore) -> None:
    await store.write_turn(record("back", 1))
    job = LifecycleJob(store, archive_after_s=60, retention_s=0, interval_s=1, clock=later(61))
    assert (await job.sweep()).archived == 1
    core = service(store)
    assembled = await chat(core, "back")
    assert assembled["context_info"]["resumed"] is True
    assert [m["content"] for m in assembled["messages"]] == ["question 1", "answer 1", "and now?"]
    session = await store.require_session("back")
    assert session.get("archived_at") is None
    assert (await store.list_sessions(10, 0))["total"] == 1
    # Active now: the next chat resumes nothing.
    assert "resumed" not in (await chat(core, "back"))["context_info"]
    # A turn written into an archived session (the chat started before it was archived)
    # makes it active too.
    job.clock = later(120)
    assert (await job.sweep()).archived == 1
    await store.write_turn(record("back", 2))
    assert (await store.require_session("back")).get("archived_at") is None


async def test_archiving_off_leaves_sessions_active(store: SessionStore) -> None:
    await store.write_turn(record("forever", 1))
    job = LifecycleJob(store, archive_after_s=0, retention_s=60, interval_s=1, clock=later(1e6))
    assert (await job.sweep()).archived == 0
    assert (await store.list_sessions(10, 0))["total"] == 1


# -- export and import -----------------------------------------------------------------------


async def test_export_then_import_restores_every_turn_once(store: SessionStore) -> None:
    created = await store.create_session("alice", title="Plans", system_prompt="Be kind.")
    sid = created["session_id"]
    await store.write_turn(record(sid, 1, owner="alice", metadata={"task": "plan", "n": 1}))
    await store.write_turn(record(sid, 2, owner="alice", model="qwen2.5:0.5b"))
    exported = await store.export(sid, "alice")
    assert exported["format"] == EXPORT_FORMAT
    assert exported["turn_count"] == 2 and exported["message_count"] == 4
    assert exported["session"]["title"] == "Plans"
    assert exported["session"]["system_prompt"] == "Be kind."
    first = exported["turns"][0]
    assert first["metadata"] == {"task": "plan", "n": 1}
    assert first["stats"]["eval_count"] == 1
    assert first["asked_at"] == "2025-08-05T14:01:00.000Z"
    assert "metadata" not in exported["turns"][1]
    assert "owner" not in exported["session"]
    # Another owner cannot export it.
    with pytest.raises(CorralError) as info:
        await store.export(sid, "bob")
    assert info.value.error_type is ErrorType.SESSION_NOT_FOUND

    before = await store.history(sid)
    await store.delete(sid, "alice")
    params = ImportParams.model_validate({**exported, "owner": "carol"})
    restored = await store.import_session(params, "carol")
    assert restored["created"] is True
    assert (restored["turns_imported"], restored["turns_skipped"]) == (2, 0)
    assert restored["title"] == "Plans" and restored["system_prompt"] == "Be kind."
    after = await store.history(sid, owner="carol")
    assert after["messages"] == before["messages"]
    assert after["created_at"] == before["created_at"]
    # Idempotent by turn id.
    again = await store.import_session(params, "carol")
    assert again["created"] is False
    assert (again["turns_imported"], again["turns_skipped"]) == (0, 2)
    assert await store.turns.count_documents({"session_id": sid}) == 2
    # Owned by the importer: invisible to its old owner, and another cannot import over it.
    with pytest.raises(CorralError):
        await store.history(sid, owner="alice")
    with pytest.raises(CorralError) as info:
        await store.import_session(params, "alice")
    assert info.value.error_type is ErrorType.SESSION_NOT_FOUND


async def test_an_import_adds_only_the_missing_turns_after_the_existing_ones(
    store: SessionStore,
) -> None:
    await store.write_turn(record("merge", 1, request_id="t1"))
    exported = await store.export("merge")
    await store.write_turn(record("merge", 2, request_id="t2"))
    extra = {
        "id": "t3",
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}],
        "asked_at": "2025-08-05T15:00:00Z",
        "answered_at": "2025-08-05T15:00:01+00:00",
        "stats": {"eval_count": 3, "junk": "dropped", "done_reason": "stop"},
    }
    params = ImportParams.model_validate({**exported, "turns": [*exported["turns"], extra]})
    result = await store.import_session(params, None)
    assert (result["turns_imported"], result["turns_skipped"]) == (1, 1)
    turns = await store.turns.find({"session_id": "merge"}, sort=[("seq", 1)]).to_list()
    assert [t["_id"] for t in turns] == ["t1", "t2", "t3"]
    assert turns[2]["stats"] == {"eval_count": 3, "done_reason": "stop"}
    assert result["last_activity"] == "2025-08-05T15:00:01.000Z"


async def test_an_archived_session_is_active_again_after_an_import(store: SessionStore) -> None:
    await store.write_turn(record("cold", 1))
    await LifecycleJob(
        store, archive_after_s=60, retention_s=0, interval_s=1, clock=later(61)
    ).sweep()
    exported = await store.export("cold")
    assert "archived_at" in exported["session"]
    await store.import_session(ImportParams.model_validate(exported), None)
    assert (await store.require_session("cold")).get("archived_at") is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"format": "other"}, "format"),
        ({"session": {"session_id": "bad id"}}, "session.session_id"),
        (
            {
                "turns": [
                    {
                        "id": "t",
                        "model": "m",
                        "messages": [],
                        "asked_at": "2025-01-01T00:00:00Z",
                        "answered_at": "2025-01-01T00:00:00Z",
                    }
                ]
            },
            "turns.0.messages",
        ),
        (
            {
                "turns": [
                    {
                        "id": "t",
                        "model": "m",
                        "messages": [{"role": "user", "content": "x"}],
                        "asked_at": "yesterday",
                        "answered_at": "2025-01-01T00:00:00Z",
                    }
                ]
            },
            "turns.0.asked_at",
        ),
        (
            {
                "turns": [
                    {
                        "id": "t",
                        "model": "m",
                        "messages": [{"role": "user", "content": "x"}],
                        "asked_at": "2025-01-01T00:00:00Z",
                        "answered_at": "2025-01-01T00:00:00Z",
                        "metadata": {"x": "y" * 5000},
                    }
                ]
            },
            "turns.0.metadata",
        ),
    ],
)
def test_a_bad_import_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    body = {"format": EXPORT_FORMAT, "session": {"session_id": "ok"}, "turns": [], **change}
    with pytest.raises(CorralError) as info:
        ImportParams(**body)
    assert info.value.error_type is ErrorType.INVALID_REQUEST
    assert info.value.details["errors"][0]["field"] == field


# -- clearing --------------------------------------------------------------------------------


async def test_clear_all_deletes_every_session_and_turn(store: SessionStore) -> None:
    for sid in ("a", "b"):
        await store.write_turn(record(sid, 1))
    await store.create_session(None)
    cleared = await store.clear_all()
    assert cleared == {"deleted": True, "sessions_deleted": 3, "turns_deleted": 2}
    assert await store.sessions.count_documents({}) == 0
    assert await store.turns.count_documents({}) == 0


# -- metadata --------------------------------------------------------------------------------


async def test_metadata_is_stored_with_the_turn_and_shown_in_history(store: SessionStore) -> None:
    done = Done(
        request_id=new_id(),
        token_batches=0,
        final={"created_at": "2025-08-05T14:00:02Z", "eval_count": 2},
        text="hi",
        waited_ms=0,
        model="llama3.2",
        session_id="meta",
        turn=[{"role": "user", "content": "hello"}],
        metadata={"user_id": "123", "task": "story_generation"},
    )
    assert await service(store).store_turn(done) is WriteOutcome.STORED
    history = await store.history("meta")
    assert [m["metadata"] for m in history["messages"]] == [
        {"user_id": "123", "task": "story_generation"}
    ] * 2
    await store.write_turn(record("meta", 5))
    assert "metadata" not in (await store.history("meta"))["messages"][-1]


# -- the message cap and the fallback system prompt ------------------------------------------


async def test_max_history_length_caps_the_history_whichever_is_tighter(
    store: SessionStore,
) -> None:
    for n in range(1, 11):
        await store.write_turn(record("long", n))
    core = service(store, max_history_length=6)
    info = (await chat(core, "long"))["context_info"]
    assert info["messages_used"] == 7  # three turns and the question
    assert info["truncated"] is True
    assert info["limited_by"] == "max_history_length"
    assert info["max_history_length"] == 6
    assert (info["turns_dropped"], info["messages_dropped"]) == (7, 14)
    # The request's own cap wins over the server's.
    info = (await chat(core, "long", max_history_length=2))["context_info"]
    assert (info["messages_used"], info["max_history_length"]) == (3, 2)
    assert (await chat(core, "long", max_history_length=0))["messages"] == [
        {"role": "user", "content": "and now?"}
    ]
    # A cap larger than what fits: the token budget decides.
    tight = await core.assemble(
        session_id="long",
        model="llama3.2",
        kind="chat",
        messages=[{"role": "user", "content": "and now?"}],
        options={"num_ctx": 48, "num_predict": 8},
        owner=None,
        max_history_length=100,
    )
    assert tight["context_info"]["limited_by"] == "tokens"
    assert tight["context_info"]["messages_used"] == 5  # 40 tokens: two turns of 14


async def test_the_fallback_system_prompt_session_then_model_then_server(
    store: SessionStore,
) -> None:
    core = service(
        store,
        system_prompt="Server default.",
        system_prompts={"qwen2.5:0.5b": "Qwen default.", "llama3.2:latest": "Llama default."},
    )
    fresh = await chat(core, new_id(), model="tiny")
    assert fresh["messages"][0] == {"role": "system", "content": "Server default."}
    assert fresh["context_info"]["system_prompt"] == "default"
    # Model names match as Ollama's do (`llama3.2` is `llama3.2:latest`).
    llama = await chat(core, new_id(), model="llama3.2")
    assert llama["messages"][0]["content"] == "Llama default."
    assert llama["context_info"]["system_prompt"] == "model_default"
    own = await store.create_session(None, system_prompt="Session's own.")
    mine = await chat(core, own["session_id"], model="qwen2.5:0.5b")
    assert mine["messages"][0]["content"] == "Session's own."
    assert mine["context_info"]["system_prompt"] == "session"
    # A system message of the request's own, or stored, wins: nothing injected.
    sent = await core.assemble(
        session_id=new_id(),
        model="llama3.2",
        kind="chat",
        messages=[{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}],
        options={},
        owner=None,
    )
    assert sent["messages"][0]["content"] == "Mine."
    assert "system_prompt" not in sent["context_info"]
    # No defaults: nothing added (the model's own Modelfile SYSTEM applies, as with Ollama).
    bare = await chat(service(store), new_id())
    assert bare["messages"] == [{"role": "user", "content": "and now?"}]
