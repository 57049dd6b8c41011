"""What a turn's write costs the database, and what it keeps: a `done` delivered the first time is
not looked up before it is inserted (a duplicate is still refused), a model's system prompt
already pinned is not pinned again, a turn's number is taken without `findAndModify` unless
another writer comes between (SecantusDB's scans the whole collection), and calibration is
saved at most once per interval."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from corral_common.ids import new_id
from corral_common.messages import Done
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.sessions import SessionService
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import SessionStore, TurnRecord, WriteOutcome

T0 = datetime(2025, 8, 5, 14, 0, tzinfo=UTC)


def turn(session_id: str, request_id: str, system: str | None = None) -> TurnRecord:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages += [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    return TurnRecord(
        request_id=request_id,
        session_id=session_id,
        model="m",
        kind="chat",
        messages=messages,
        asked_at=T0,
        answered_at=T0,
    )


async def test_a_duplicate_not_looked_for_is_still_refused(store: SessionStore) -> None:
    session_id = new_id()
    first = turn(session_id, "dup-1")
    assert await store.write_turn(first, look_first=False) is WriteOutcome.STORED
    assert await store.write_turn(first, look_first=False) is WriteOutcome.DUPLICATE
    assert await store.write_turn(first) is WriteOutcome.DUPLICATE
    assert await store.turns.count_documents({"session_id": session_id}) == 1
    history = await store.history(session_id)
    assert [m["content"] for m in history["messages"]] == ["q", "a"]


async def test_a_models_first_system_prompt_is_pinned_once(store: SessionStore) -> None:
    session_id = new_id()
    for n, system in enumerate(["be brief", "be brief", "be long"]):
        written = await store.write_turn(turn(session_id, f"sys-{n}-{session_id}", system))
        assert written is WriteOutcome.STORED
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None
    assert session["systems"] == [
        {"model": "m", "message": {"role": "system", "content": "be brief"}}
    ]


class Commands(monitoring.CommandListener):
    """The names of the commands a client sent, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def watched(mongo_url: str) -> AsyncIterator[tuple[SessionStore, Commands]]:
    """A store whose client's commands are recorded, on a database of its own."""
    commands = Commands()
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_url, tz_aware=True, event_listeners=[commands]
    )
    name = f"corral_test_{new_id()[:12]}"
    store = SessionStore(client[name])
    await store.ensure_indexes()
    yield store, commands
    await client.drop_database(name)
    await client.close()


async def test_a_turns_number_is_taken_by_an_update_and_a_read(
    watched: tuple[SessionStore, Commands],
) -> None:
    store, commands = watched
    session_id = new_id()
    await store.write_turn(turn(session_id, new_id()), look_first=False)
    commands.names.clear()
    assert await store.write_turn(turn(session_id, new_id()), look_first=False) is (
        WriteOutcome.STORED
    )
    assert commands.names == ["update", "find", "insert"]
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None and session["turn_seq"] == 2


async def test_a_writer_between_the_update_and_the_read_costs_a_number_not_a_turn(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = new_id()
    assert await store.write_turn(turn(session_id, "first")) is WriteOutcome.STORED
    find_one = store.sessions.find_one
    interleaved: list[int] = []

    async def another_writer_first(*args: Any, **kwargs: Any) -> Any:
        if not interleaved and args and args[0] == {"_id": session_id, "owner": None}:
            # Another writer's number taken after this one's update, before its read.
            other = await store.sessions.find_one_and_update(
                {"_id": session_id},
                {"$inc": {"turn_seq": 1}, "$set": {"seq_taker": "someone else"}},
                return_document=True,
            )
            assert other is not None
            interleaved.append(other["turn_seq"])
        return await find_one(*args, **kwargs)

    monkeypatch.setattr(store.sessions, "find_one", another_writer_first)
    assert await store.write_turn(turn(session_id, "second")) is WriteOutcome.STORED
    # 2 was this write's own but unknown to it once read back, 3 the other writer's: this
    # turn took 4, atomically.
    assert interleaved == [3]
    second = await store.turns.find_one({"_id": "second"})
    assert second is not None and second["seq"] == 4
    monkeypatch.undo()
    assert await store.write_turn(turn(session_id, "third")) is WriteOutcome.STORED
    seqs = [d["seq"] async for d in store.turns.find({"session_id": session_id}, sort=[("seq", 1)])]
    assert seqs == [1, 4, 5]
    history = await store.history(session_id)
    assert len(history["messages"]) == 6


def done(session_id: str, request_id: str) -> Done:
    return Done(
        request_id=request_id,
        token_batches=0,
        final={"prompt_eval_count": 30},
        text="a",
        waited_ms=0,
        model="m",
        session_id=session_id,
        turn=[{"role": "user", "content": "q" * 80}],
    )


async def test_calibration_is_saved_at_most_once_per_interval(store: SessionStore) -> None:
    service = SessionService(store, StaticContextLengths(), SessionStoreSettings())
    await store.calibration.delete_many({})
    session_id = new_id()
    for n in range(3):
        request_id = f"cal-{n}-{session_id}"
        await service.assemble(
            session_id=session_id,
            model="m",
            kind="chat",
            messages=[{"role": "user", "content": "q" * 80}],
            options=None,
            owner=None,
            request_id=request_id,
        )
        assert await service.store_turn(done(session_id, request_id)) is WriteOutcome.STORED
    assert service.calibrations["m"].samples == 3
    saved = await store.calibration.find_one({"_id": "m"})
    assert saved is not None and saved["samples"] == 1
    await service.save_calibrations()
    saved = await store.calibration.find_one({"_id": "m"})
    assert saved is not None and saved["samples"] == 3


async def test_a_jobs_turn_looks_at_the_tombstones_only_for_a_session_not_alive_before_it(
    watched: tuple[SessionStore, Commands],
) -> None:
    """A job's turn must not make a session deleted after it was asked again, at no cost to a
    turn in a session alive since before it was asked: the update that takes its number says."""
    store, commands = watched
    service = SessionService(store, StaticContextLengths(), SessionStoreSettings())
    session_id = new_id()
    asked = datetime.now(UTC).timestamp()
    first = done(session_id, new_id()).model_copy(update={"enqueued_at": asked - 10})
    commands.names.clear()
    assert await service.store_turn(first, look_first=False) is WriteOutcome.STORED
    # The first one: no session alive then, so the tombstones are read before the upsert (and
    # the new session is named after its question).
    assert commands.names == ["update", "find", "update", "find", "update", "insert"]
    commands.names.clear()
    second = done(session_id, new_id()).model_copy(update={"enqueued_at": asked})
    assert await service.store_turn(second, look_first=False) is WriteOutcome.STORED
    assert commands.names == ["update", "find", "insert"]
