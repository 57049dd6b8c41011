"""Turns that must not be written as they would have been, and turns that must be.

A session deleted (or purged, or cleared) while one of its turns was generating stays deleted:
the turn's `done` comes after the deletion, and a turn asked before it is dropped, whichever
replica writes it; one asked after it makes the session anew. A request id reused for another
question or in another session (a client sending the same `X-Request-Id` twice) is a turn of
its own, never a duplicate of the first, and never a session made empty; a redelivery of one
job's `done`, a rerun of the job, and a retry of the same question are still written once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from corral_common.contracts.session_store import ImportParams
from corral_common.ids import new_id
from corral_common.messages import Done
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.sessions import SessionService, job_fingerprint, turn_record
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import (
    ALL_SESSIONS,
    Document,
    SessionStore,
    WriteOutcome,
    utcnow,
)
from corral_session_store.tokens import TokenEstimator


def done(session_id: str, request_id: str, asked: float, text: str = "a", **more: Any) -> Done:
    """A chat's `done` as the scheduler sends it: the question enqueued at epoch `asked`."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "gateway_id": "gw1",
        "token_batches": 1,
        "final": {"prompt_eval_count": 10, "eval_count": 2},
        "text": f"answer to {text}",
        "enqueued_at": asked,
        "waited_ms": 0,
        "model": "m",
        "session_id": session_id,
        "turn": [{"role": "user", "content": text}],
    }
    fields.update(more)
    return Done.model_validate(fields)


def service_of(store: SessionStore) -> SessionService:
    return SessionService(store, StaticContextLengths(), SessionStoreSettings())


async def contents(store: SessionStore, session_id: str) -> list[str]:
    history = await store.history(session_id)
    return [m["content"] for m in history["messages"]]


# -- deletions -------------------------------------------------------------------------------


async def test_a_turn_asked_before_its_session_was_deleted_does_not_bring_it_back(
    store: SessionStore,
) -> None:
    service = service_of(store)
    sid = new_id()
    assert await service.store_turn(done(sid, new_id(), time.time() - 60, "one")) is (
        WriteOutcome.STORED
    )
    generating = done(sid, new_id(), time.time() - 1, "two")  # asked, still generating
    deleted = await service.delete(sid, None)
    assert deleted["deleted"] is True
    # Its `done` comes after the deletion: dropped, first delivery or redelivery alike.
    assert await service.store_turn(generating, look_first=False) is WriteOutcome.DELETED
    assert await service.store_turn(generating) is WriteOutcome.DELETED
    assert await store.find_session(sid) is None
    assert await store.turns.count_documents({"session_id": sid}) == 0
    # A turn asked after the deletion makes the session anew, with only itself.
    deleted_at = utcnow()
    # Asked after the deletion (a moment on: the database keeps milliseconds).
    assert await service.store_turn(done(sid, new_id(), time.time() + 0.01, "three")) is (
        WriteOutcome.STORED
    )
    assert await contents(store, sid) == ["three", "answer to three"]
    session = await store.find_session(sid)
    assert session is not None and session["turn_seq"] == 1
    assert session["created_at"] >= deleted_at and session["alive_since"] >= deleted_at
    # A late turn asked before the deletion still cannot get into the new session.
    assert await service.store_turn(done(sid, new_id(), time.time() - 30, "old")) is (
        WriteOutcome.DELETED
    )
    assert await contents(store, sid) == ["three", "answer to three"]


async def test_tombstones_live_in_the_database_and_expire(
    store: SessionStore, database: AsyncDatabase[Document]
) -> None:
    replica = SessionStore(database)  # the turns' writer is another store replica
    sid = new_id()
    await service_of(replica).store_turn(done(sid, new_id(), time.time() - 60, "one"))
    asked = time.time() - 1
    await store.delete(sid)
    assert await service_of(replica).store_turn(done(sid, new_id(), asked)) is (
        WriteOutcome.DELETED
    )
    assert await replica.find_session(sid) is None
    tombstone = await store.tombstones.find_one({"_id": sid})
    assert tombstone is not None
    assert tombstone["expires_at"] - tombstone["deleted_at"] == timedelta(days=7)
    indexes = await store.tombstones.index_information()
    assert any(
        index.get("expireAfterSeconds") == 0 and index["key"] == [("expires_at", 1)]
        for index in indexes.values()
    )


async def test_a_clear_drops_every_turn_asked_before_it(store: SessionStore) -> None:
    service = service_of(store)
    sessions = [new_id() for _ in range(3)]
    for sid in sessions:
        await service.store_turn(done(sid, new_id(), time.time() - 60))
    asked = time.time() - 1
    cleared = await store.clear_all()
    assert cleared["sessions_deleted"] == 3
    assert await store.tombstones.find_one({"_id": ALL_SESSIONS}) is not None
    for sid in [*sessions, new_id()]:
        assert await service.store_turn(done(sid, new_id(), asked)) is WriteOutcome.DELETED
    assert await store.sessions.count_documents({}) == 0
    asked_after = time.time() + 0.01  # the database keeps milliseconds
    assert await service.store_turn(done(sessions[0], new_id(), asked_after, "new")) is (
        WriteOutcome.STORED
    )
    assert await contents(store, sessions[0]) == ["new", "answer to new"]


async def test_a_purged_session_stays_purged_but_a_resumed_one_gets_its_turn(
    store: SessionStore,
) -> None:
    service = service_of(store)
    purged, resumed = new_id(), new_id()
    for sid in (purged, resumed):
        await service.store_turn(done(sid, new_id(), time.time() - 60))
    now = utcnow()
    await store.sessions.update_many({}, {"$set": {"archived_at": now - timedelta(days=2)}})
    # A generate asked before the purge (a generate does not resume its session)...
    generating = done(purged, new_id(), time.time() - 1, job_kind="generate")
    # ...and a chat that resumed its session while the purge was under way.
    chat = done(resumed, new_id(), time.time() - 1)
    find = store.sessions.find

    def resume_meanwhile(*args: Any, **kwargs: Any) -> Any:
        cursor = find(*args, **kwargs)
        asyncio.get_running_loop().create_task(store.resume(resumed))
        return cursor

    store.sessions.find = resume_meanwhile  # type: ignore[method-assign]
    try:
        gone, _ = await store.purge_archived(utcnow(), 86_400)
    finally:
        del store.sessions.find
    assert gone == 1
    assert await service.store_turn(generating) is WriteOutcome.DELETED
    assert await store.find_session(purged) is None
    assert await store.tombstones.find_one({"_id": resumed}) is None
    assert await service.store_turn(chat) is WriteOutcome.STORED


async def test_a_delete_waits_for_the_turns_of_its_session_being_written_here(
    store: SessionStore,
) -> None:
    service = service_of(store)
    sid = new_id()
    await service.store_turn(done(sid, new_id(), time.time() - 60))
    async with service.writes.hold(sid):  # the turns consumer has a `done` of it in hand
        deleting = asyncio.create_task(service.delete(sid, None))
        # The delete gets in line behind the write in hand (a second user of its lock)...
        for _ in range(1000):
            if service.writes.users(sid) == 2:
                break
            await asyncio.sleep(0)
        assert service.writes.users(sid) == 2
        # ...and has not gone past it.
        assert not deleting.done()
    assert (await deleting)["deleted"] is True


async def test_no_window_of_a_deleted_session_survives_an_import_of_it(
    store: SessionStore, database: AsyncDatabase[Document]
) -> None:
    """The writer's window of a session is checked by the session's `turn_seq` and creation:
    a session deleted and imported again elsewhere with the same number of turns and the same
    `created_at` (an edited export) is another session all the same."""
    estimator = TokenEstimator()
    service = service_of(store)
    sid = new_id()
    for text in ("one", "two"):
        await service.store_turn(done(sid, new_id(), time.time() - 60, text))
    session = await store.find_session(sid)
    await store.history_window(sid, "m", 4000, estimator, session)  # the window is kept
    exported = await store.export(sid)
    for turn in exported["turns"]:
        turn["id"] = new_id()
        turn["messages"][0]["content"] = "edited"
    replica = SessionStore(database)
    await replica.delete(sid)
    await replica.import_session(ImportParams.model_validate(exported), None)
    session = await store.find_session(sid)
    assert session is not None and session["turn_seq"] == 2
    assert session["created_at"].isoformat()[:23] == exported["session"]["created_at"][:23]
    window = await store.history_window(sid, "m", 4000, estimator, session)
    assert [turn[0]["content"] for turn in window.turns] == ["edited", "edited"]


# -- reused request ids ----------------------------------------------------------------------


async def test_a_reused_request_id_in_one_session_is_a_turn_of_its_own(
    store: SessionStore,
) -> None:
    service = service_of(store)
    sid = new_id()
    first = done(sid, "same-id", time.time() - 10, "first question")
    second = done(sid, "same-id", time.time() - 5, "second question")
    assert await service.store_turn(first, look_first=False) is WriteOutcome.STORED
    assert await service.store_turn(second, look_first=False) is WriteOutcome.STORED
    assert await contents(store, sid) == [
        "first question",
        "answer to first question",
        "second question",
        "answer to second question",
    ]
    # Numbered one after the other: the second took no number it did not use.
    seqs = [d["seq"] async for d in store.turns.find({"session_id": sid}, sort=[("seq", 1)])]
    assert seqs == [1, 2]
    # Each one's redeliveries (looked for or not) are still duplicates.
    for event in (first, second):
        assert await service.store_turn(event) is WriteOutcome.DUPLICATE
        assert await service.store_turn(event, look_first=False) is WriteOutcome.DUPLICATE
    assert await store.turns.count_documents({"session_id": sid}) == 2
    # A third use of the id is a third turn.
    third = done(sid, "same-id", time.time(), "third question")
    assert await service.store_turn(third) is WriteOutcome.STORED
    assert await store.turns.count_documents({"session_id": sid}) == 3


async def test_a_reused_request_id_in_another_session_never_makes_it_empty(
    store: SessionStore,
) -> None:
    service = service_of(store)
    one, two = new_id(), new_id()
    asked = time.time() - 10
    assert await service.store_turn(done(one, "rid", asked, "in one")) is WriteOutcome.STORED
    # Even with the same enqueue time: another session is another job.
    assert await service.store_turn(done(two, "rid", asked, "in two"), look_first=False) is (
        WriteOutcome.STORED
    )
    assert await contents(store, two) == ["in two", "answer to in two"]
    listed = await store.list_sessions(10, 0)
    counts = {s["session_id"]: s["message_count"] for s in listed["sessions"]}
    assert counts == {one: 2, two: 2}
    exported = await store.export(two)
    assert exported["turn_count"] == 1
    # Its id, though not the request id, is one an import takes back.
    ImportParams.model_validate(exported)


async def test_a_redelivery_or_a_rerun_of_one_job_is_stored_once(store: SessionStore) -> None:
    service = service_of(store)
    sid = new_id()
    job = done(sid, new_id(), time.time() - 10, "question")
    assert await service.store_turn(job, look_first=False) is WriteOutcome.STORED
    # The standby scheduler ran the job again after a failover: another answer, the same job.
    rerun = job.model_copy(update={"text": "another answer", "final": {"eval_count": 9}})
    assert job_fingerprint(rerun) == job_fingerprint(job)
    assert await service.store_turn(rerun, look_first=False) is WriteOutcome.DUPLICATE
    assert await service.store_turn(rerun) is WriteOutcome.DUPLICATE
    assert await contents(store, sid) == ["question", "answer to question"]


async def test_a_turn_stored_before_fingerprints_is_still_found_by_its_redelivery(
    store: SessionStore,
) -> None:
    service = service_of(store)
    sid = new_id()
    event = done(sid, new_id(), time.time() - 10)
    unmarked = dataclasses.replace(turn_record(event, utcnow()), job=None)
    assert await store.write_turn(unmarked) is WriteOutcome.STORED
    stored = await store.turns.find_one({"_id": event.request_id})
    assert stored is not None and "job" not in stored
    assert await service.store_turn(event, look_first=False) is WriteOutcome.DUPLICATE
    assert await service.store_turn(event) is WriteOutcome.DUPLICATE
    # But the same id for another question is another turn.
    other = done(sid, event.request_id, time.time(), "other")
    assert await service.store_turn(other) is WriteOutcome.STORED
    assert await store.turns.count_documents({"session_id": sid}) == 2


async def test_a_retry_of_the_same_question_with_the_same_id_is_stored_once(
    store: SessionStore,
) -> None:
    """docs/session-store.md: a client cut off with its gateway retries through another one
    with the same `X-Request-Id`; its turn was stored already, and is not stored twice."""
    service = service_of(store)
    sid = new_id()
    first = done(sid, "retried", time.time() - 30, "question")
    assert await service.store_turn(first) is WriteOutcome.STORED
    retry = first.model_copy(
        update={"enqueued_at": time.time(), "gateway_id": "gw2", "text": "another answer"}
    )
    assert await service.store_turn(retry, look_first=False) is WriteOutcome.DUPLICATE
    assert await store.turns.count_documents({"session_id": sid}) == 1


def test_what_tells_requests_apart() -> None:
    base = done("s", "r", 1_754_400_000.123456, "q")
    for same in ({"text": "other"}, {"enqueued_at": 1.0}, {"gateway_id": "gw2"}):
        assert job_fingerprint(base) == job_fingerprint(base.model_copy(update=same))
    for change in (
        {"session_id": "t"},
        {"turn": [{"role": "user", "content": "q2"}]},
        {"model": "n"},
        {"owner": "key-2"},
        {"job_kind": "generate"},
    ):
        assert job_fingerprint(base) != job_fingerprint(base.model_copy(update=change))
    # Turns of a job carry it; an import's do not.
    assert turn_record(base, datetime.now(UTC)).job == job_fingerprint(base)
