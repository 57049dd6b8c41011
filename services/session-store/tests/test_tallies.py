"""Per-model tallies on the session: assembly's count of the turns it left out comes from them,
not from a scan of the history. They must stay exact through retries, duplicates, crashes
between a turn and its tally, out-of-order writers, imports, deletes and sessions written
before tallies existed, and assembly must answer exactly what a count over every turn says."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from corral_common.contracts.session_store import ImportParams
from corral_common.ids import new_id
from corral_session_store.store import (
    BACKEND_KEYS,
    FOLD_EVERY,
    Document,
    HistoryWindow,
    SessionStore,
    Tally,
    TurnRecord,
    WriteOutcome,
    clean_message,
    tally_of,
)
from corral_session_store.tokens import TokenEstimator

T0 = datetime(2025, 8, 5, 14, 0, tzinfo=UTC)
MODELS = ("llama3.2", "qwen2.5:0.5b", "mistral:7b")


def turn(
    session_id: str,
    n: int,
    *,
    model: str = "llama3.2",
    extra: int = 0,
    system: bool = False,
    words: int = 3,
    request_id: str | None = None,
) -> TurnRecord:
    """A turn of `2 + extra (+ 1 system)` messages, `words` words a message."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": f"system {n}"})
    for k in range(extra):
        messages.append({"role": "user", "content": f"earlier {n}.{k} " + "word " * words})
    messages.append({"role": "user", "content": f"question {n} " + "word " * words})
    messages.append({"role": "assistant", "content": f"answer {n} " + "word " * words})
    at = T0 + timedelta(seconds=n)
    return TurnRecord(
        request_id=request_id or new_id(),
        session_id=session_id,
        model=model,
        kind="chat",
        messages=messages,
        asked_at=at,
        answered_at=at,
    )


async def stored_tallies(store: SessionStore, session_id: str) -> dict[str, Tally] | None:
    """The session's tallies by model (each with `tallied` and `holes`); None if it keeps
    none."""
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None
    if tally_of(session, "") is None:
        return None
    return {
        entry["model"]: tally
        for entry in session["tallies"]
        if (tally := tally_of(session, entry["model"])) is not None
    }


async def assert_consistent(store: SessionStore, session_id: str) -> dict[str, Tally]:
    """The session's tallies count exactly its stored turns numbered up to `tallied` and not
    in `holes`; its tallies."""
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None and tally_of(session, "") is not None, "no tallies kept"
    tallied = session["tallied"]
    holes = set(session.get("holes") or [])
    assert all(0 < hole <= tallied for hole in holes)
    expected: dict[str, tuple[int, int]] = {}
    async for doc in store.turns.find({"session_id": session_id}):
        if doc["seq"] <= tallied and doc["seq"] not in holes:
            turns_n, messages_n = expected.get(doc["model"], (0, 0))
            expected[doc["model"]] = (turns_n + 1, messages_n + doc["message_count"])
    stored = await stored_tallies(store, session_id)
    assert stored is not None
    assert {m: (t.turns, t.messages) for m, t in stored.items() if t.turns} == expected
    return stored


async def assert_exact(store: SessionStore, session_id: str) -> None:
    """After a fold up to the session's last number, its tallies count every turn it has."""
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None
    await store.fold_tallies(session_id, session["turn_seq"])
    stored = await assert_consistent(store, session_id)
    every = await store.turns.find({"session_id": session_id}).to_list()
    assert sum(t.turns for t in stored.values()) == len(every)
    assert sum(t.messages for t in stored.values()) == sum(d["message_count"] for d in every)


def copied(exported: Document, session_id: str) -> ImportParams:
    """An export imported as another session (its turns under new ids: ids are global)."""
    exported["session"]["session_id"] = session_id
    for item in exported["turns"]:
        item["id"] = new_id()
    return ImportParams.model_validate(exported)


@dataclass(frozen=True)
class Expected:
    turns: list[list[Document]]
    older_turns: int
    older_messages: int
    older_limited_by: Literal["tokens", "max_history_length"]


async def brute_force(
    store: SessionStore,
    session_id: str,
    model: str,
    budget: int,
    estimator: TokenEstimator,
    max_messages: int | None,
) -> Expected:
    """What `history_window` must answer, from every turn of the model: newest first until
    the budget or the cap is passed (that turn included), the rest counted."""
    every = await store.turns.find({"session_id": session_id, "model": model}).to_list()
    every.sort(key=lambda doc: int(doc["seq"]), reverse=True)
    newest: list[list[Document]] = []
    cost = count = 0
    for index, doc in enumerate(every):
        messages = [clean_message(m, BACKEND_KEYS) for m in doc["messages"]]
        newest.append(messages)
        cost += estimator.messages(messages)
        count += sum(1 for m in messages if m.get("role") != "system")
        if cost > budget or (max_messages is not None and count > max_messages):
            rest = every[index + 1 :]
            return Expected(
                newest[::-1],
                len(rest),
                sum(len(d["messages"]) for d in rest),
                "tokens" if cost > budget else "max_history_length",
            )
    return Expected(newest[::-1], 0, 0, "tokens")


def seen(window: HistoryWindow) -> Expected:
    return Expected(
        window.turns, window.older_turns, window.older_messages, window.older_limited_by
    )


async def assert_windows_exact(
    store: SessionStore, session_id: str, rng: random.Random, tries: int = 6
) -> None:
    """`history_window` for every model, at random budgets and caps, is the brute force."""
    estimator = TokenEstimator()
    for model in MODELS:
        for _ in range(tries):
            budget = rng.choice([5, 20, 60, 150, 400, 10**6])
            cap = rng.choice([None, None, 1, 3, 10, 40])
            expected = await brute_force(store, session_id, model, budget, estimator, cap)
            window = await store.history_window(
                session_id, model, budget, estimator, max_messages=cap
            )
            assert seen(window) == expected, (model, budget, cap)


class Crash(Exception):
    """A write died mid-way."""


def crash_once(store: SessionStore, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The next call to `where` (`insert` of a turn, or `fold` of the tallies) dies."""
    target, name = (store.turns, "insert_one") if where == "insert" else (store, "fold_tallies")
    original = getattr(target, name)

    async def dying(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(target, name, original)
        raise Crash

    monkeypatch.setattr(target, name, dying)


def count_recounts(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often assembly counts with the server: every model (`recount`), the model's turns
    below the window (`count_older`: a scan), or only a range the tallies have not reached
    (`between`)."""
    calls = {"recount": 0, "count_older": 0, "between": 0}
    recount, count_older = store._recount, store._count_older

    async def counted_recount(*args: Any) -> Any:
        calls["recount"] += 1
        return await recount(*args)

    async def counted_older(*args: Any, **kwargs: Any) -> Any:
        calls["between" if kwargs.get("above") else "count_older"] += 1
        return await count_older(*args, **kwargs)

    monkeypatch.setattr(store, "_recount", counted_recount)
    monkeypatch.setattr(store, "_count_older", counted_older)
    return calls


# -- maintenance ------------------------------------------------------------------------------


async def test_each_model_is_tallied_every_fold(store: SessionStore) -> None:
    for n in range(1, FOLD_EVERY + 9):
        await store.write_turn(turn("m", n, model=MODELS[n % 2], extra=n % 3, system=n == 1))
    stored = await assert_consistent(store, "m")
    assert {t.seq for t in stored.values()} == {FOLD_EVERY}
    assert sum(t.turns for t in stored.values()) == FOLD_EVERY
    await assert_exact(store, "m")


async def test_a_write_folds_once_in_fold_every_turns(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Any] = []
    ranges: list[Any] = []
    update_one, find = store.sessions.update_one, store.turns.find

    async def counted_update(*args: Any, **kwargs: Any) -> Any:
        if "tallies" in (args[1].get("$set") or {}):
            writes.append(args)  # a fold, not the upsert that takes the turn's number
        return await update_one(*args, **kwargs)

    def counted_find(*args: Any, **kwargs: Any) -> Any:
        if "seq" in (args[0] if args else kwargs.get("filter") or {}):
            ranges.append(args)  # not the duplicate check (`find_one` by id)
        return find(*args, **kwargs)

    monkeypatch.setattr(store.sessions, "update_one", counted_update)
    monkeypatch.setattr(store.turns, "find", counted_find)
    for n in range(1, 2 * FOLD_EVERY + 6):
        await store.write_turn(turn("quick", n, model=MODELS[n % 2]))
    assert len(writes) == 2 and len(ranges) == 2
    await assert_consistent(store, "quick")


async def test_a_new_session_starts_with_empty_tallies(store: SessionStore) -> None:
    created = await store.create_session("alice", title="empty")
    assert await stored_tallies(store, created["session_id"]) == {}
    await store.write_turn(turn("fresh", 1))
    assert await stored_tallies(store, "fresh") == {}
    await assert_exact(store, "fresh")


async def test_duplicates_and_retries_count_once(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = turn("d", 1)
    assert await store.write_turn(first) is WriteOutcome.STORED
    assert await store.write_turn(first) is WriteOutcome.DUPLICATE
    again = turn("d", 2)
    # The same turn delivered many times at once: one is stored, the rest are duplicates (the
    # numbers they took stay unused: holes).
    outcomes = await asyncio.gather(*(store.write_turn(again) for _ in range(8)))
    assert outcomes.count(WriteOutcome.STORED) == 1
    # A write that dies between its number and its turn, then is delivered again.
    dying = turn("d", 3, extra=1)
    crash_once(store, monkeypatch, "insert")
    with pytest.raises(Crash):
        await store.write_turn(dying)
    assert await store.write_turn(dying) is WriteOutcome.STORED
    # A write that dies after its turn, before its fold, then is delivered again.
    for n in range(4, FOLD_EVERY + 4):
        record = turn("d", n)
        session = await store.sessions.find_one({"_id": "d"})
        assert session is not None
        if session["turn_seq"] + 1 - session["tallied"] >= FOLD_EVERY:
            crash_once(store, monkeypatch, "fold")
            with pytest.raises(Crash):
                await store.write_turn(record)
        await store.write_turn(record)
        await store.write_turn(first)
    await assert_consistent(store, "d")
    await assert_exact(store, "d")
    stored = await stored_tallies(store, "d")
    assert stored is not None
    assert stored["llama3.2"].turns == FOLD_EVERY + 3


async def test_a_turn_stored_after_a_fold_passed_its_number_is_counted_by_the_next(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers in one session: the first takes its number, then the second writes on
    until a fold passes that number before the first's turn is stored. The number is a hole;
    assembly counts the turn once it is there, and the next fold counts it in."""
    await store.write_turn(turn("o", 1))
    slow = turn("o", 2, extra=1, words=20)
    took, go_on = asyncio.Event(), asyncio.Event()
    next_seq = store._next_seq

    async def paused(record: TurnRecord) -> Any:
        taken = await next_seq(record)
        if record.request_id == slow.request_id:
            took.set()
            await go_on.wait()
        return taken

    monkeypatch.setattr(store, "_next_seq", paused)
    first = asyncio.create_task(store.write_turn(slow))
    await took.wait()
    for n in range(3, FOLD_EVERY + 3):
        assert await store.write_turn(turn("o", n, words=20)) is WriteOutcome.STORED
    stored = await assert_consistent(store, "o")
    assert stored["llama3.2"].holes == {2}
    go_on.set()
    assert await first is WriteOutcome.STORED

    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    for budget in (30, 200, 600):
        expected = await brute_force(store, "o", "llama3.2", budget, estimator, None)
        assert expected.older_turns > 0
        assert seen(await store.history_window("o", "llama3.2", budget, estimator)) == expected
    assert calls == {"recount": 0, "count_older": 0, "between": 0}
    await assert_exact(store, "o")
    stored = await assert_consistent(store, "o")
    assert stored["llama3.2"].holes == frozenset()


async def test_tallies_far_behind_count_only_what_they_have_not_reached(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds that kept failing (say, contention) leave the tallies far behind: assembly
    counts only the numbers between them and the turns it read, and answers the same."""

    async def no_fold(*args: Any, **kwargs: Any) -> None:
        return None

    for n in range(1, 101):
        await store.write_turn(turn("lag", n, words=2))
    monkeypatch.setattr(store, "fold_tallies", no_fold)
    for n in range(101, 301):
        await store.write_turn(turn("lag", n, words=2))
    monkeypatch.undo()
    stored = await assert_consistent(store, "lag")
    assert stored["llama3.2"].seq == 3 * FOLD_EVERY
    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    # 80 turns of 2 messages: past the first range read, so not all below them are in hand.
    expected = await brute_force(store, "lag", "llama3.2", 10**6, estimator, 160)
    assert expected.older_turns == 300 - 81
    window = await store.history_window("lag", "llama3.2", 10**6, estimator, max_messages=160)
    assert seen(window) == expected
    assert calls == {"recount": 0, "count_older": 0, "between": 1}


# -- assembly -------------------------------------------------------------------------------


async def test_assembly_on_a_long_session_scans_nothing(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 201):
        await store.write_turn(turn("long", n, model=MODELS[n % 2]))
    aggregate = store.turns.aggregate
    calls: list[Any] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await aggregate(*args, **kwargs)

    monkeypatch.setattr(store.turns, "aggregate", counted)
    estimator = TokenEstimator()
    for model in MODELS[:2]:
        for budget, cap in ((100, None), (10**6, 10), (10**6, 60)):
            expected = await brute_force(store, "long", model, budget, estimator, cap)
            window = await store.history_window("long", model, budget, estimator, max_messages=cap)
            assert seen(window) == expected and window.older_turns > 30
    assert calls == []


# -- sessions from before tallies -----------------------------------------------------------


async def test_a_session_without_tallies_is_counted_once(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 31):
        await store.write_turn(turn("old", n, model=MODELS[n % 3], extra=n % 2, words=10))
    # As written before tallies existed.
    await store.sessions.update_one(
        {"_id": "old"}, {"$unset": {"tallies": "", "tallied": "", "tally_rev": ""}}
    )
    for n in range(31, 31 + FOLD_EVERY):
        await store.write_turn(turn("old", n, model=MODELS[0]))  # writes do not start them
    assert await stored_tallies(store, "old") is None

    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    expected = await brute_force(store, "old", MODELS[1], 50, estimator, None)
    assert expected.older_turns > 0
    assert seen(await store.history_window("old", MODELS[1], 50, estimator)) == expected
    assert calls["recount"] == 1
    await assert_consistent(store, "old")
    for model in MODELS:
        expected = await brute_force(store, "old", model, 50, estimator, 4)
        assert seen(await store.history_window("old", model, 50, estimator, max_messages=4)) == (
            expected
        )
    assert calls == {"recount": 1, "count_older": 0, "between": 0}
    for n in range(31 + FOLD_EVERY, 31 + 2 * FOLD_EVERY):
        await store.write_turn(turn("old", n, model=MODELS[2]))
    await assert_consistent(store, "old")
    await assert_exact(store, "old")


async def test_a_recount_while_a_turn_is_on_its_way_leaves_it_a_hole(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 81):
        await store.write_turn(turn("busy", n, words=20))
    await store.sessions.update_one({"_id": "busy"}, {"$unset": {"tallies": ""}})
    slow = turn("busy", 81, words=20)
    took, go_on = asyncio.Event(), asyncio.Event()
    next_seq = store._next_seq

    async def paused(record: TurnRecord) -> Any:
        taken = await next_seq(record)
        if record.request_id == slow.request_id:
            took.set()
            await go_on.wait()
        return taken

    monkeypatch.setattr(store, "_next_seq", paused)
    first = asyncio.create_task(store.write_turn(slow))
    await took.wait()
    estimator = TokenEstimator()
    expected = await brute_force(store, "busy", "llama3.2", 300, estimator, None)
    assert seen(await store.history_window("busy", "llama3.2", 300, estimator)) == expected
    stored = await assert_consistent(store, "busy")
    assert stored["llama3.2"].holes == {81}
    go_on.set()
    assert await first is WriteOutcome.STORED
    for budget in (300, 3000):
        expected = await brute_force(store, "busy", "llama3.2", budget, estimator, None)
        assert seen(await store.history_window("busy", "llama3.2", budget, estimator)) == expected
    await assert_exact(store, "busy")


async def test_a_session_that_fits_is_never_counted(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 4):
        await store.write_turn(turn("small", n))
    await store.sessions.update_one({"_id": "small"}, {"$unset": {"tallies": "", "tally_rev": ""}})
    calls = count_recounts(store, monkeypatch)
    window = await store.history_window("small", "llama3.2", 10**6, TokenEstimator())
    assert len(window.turns) == 3 and window.older_turns == 0
    assert calls == {"recount": 0, "count_older": 0, "between": 0}


# -- imports and deletes --------------------------------------------------------------------


async def test_an_import_is_tallied_and_a_repeat_changes_nothing(store: SessionStore) -> None:
    for n in range(1, 2 * FOLD_EVERY + 11):
        await store.write_turn(turn("src", n, model=MODELS[n % 2], extra=n % 3))
    params = copied(await store.export("src"), "copy")
    restored = await store.import_session(params, None)
    assert restored["turns_imported"] == 2 * FOLD_EVERY + 10
    await assert_consistent(store, "copy")
    before = await stored_tallies(store, "copy")
    again = await store.import_session(params, None)
    assert again["turns_skipped"] == 2 * FOLD_EVERY + 10
    assert await stored_tallies(store, "copy") == before
    await assert_windows_exact(store, "copy", random.Random(7))
    await assert_exact(store, "src")
    await assert_exact(store, "copy")
    source, copy = await stored_tallies(store, "src"), await stored_tallies(store, "copy")
    assert source is not None and copy is not None
    assert {m: (t.turns, t.messages) for m, t in copy.items()} == {
        m: (t.turns, t.messages) for m, t in source.items()
    }


async def test_an_import_into_a_session_with_turns_adds_to_its_tallies(
    store: SessionStore,
) -> None:
    for n in range(1, 4):
        await store.write_turn(turn("into", n))
    for n in range(1, FOLD_EVERY + 6):
        await store.write_turn(turn("other", n, model=MODELS[1]))
    imported = await store.import_session(copied(await store.export("other"), "into"), None)
    assert imported["turns_imported"] == FOLD_EVERY + 5
    await assert_consistent(store, "into")
    await assert_exact(store, "into")
    tallies = await stored_tallies(store, "into")
    assert tallies is not None
    assert {m: t.turns for m, t in tallies.items()} == {MODELS[0]: 3, MODELS[1]: FOLD_EVERY + 5}


async def test_an_interrupted_delete_leaves_no_wrong_tally(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, FOLD_EVERY + 9):
        await store.write_turn(turn("gone", n, words=20))

    async def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(store.sessions, "delete_one", interrupted)
    with pytest.raises(Crash):
        await store.delete("gone")
    monkeypatch.undo()
    # The session is still there, its turns are not; a chat uses it again.
    for n in range(100, 106):
        await store.write_turn(turn("gone", n, words=20))
    estimator = TokenEstimator()
    expected = await brute_force(store, "gone", "llama3.2", 40, estimator, None)
    assert seen(await store.history_window("gone", "llama3.2", 40, estimator)) == expected
    assert expected.older_turns + len(expected.turns) == 6
    await assert_exact(store, "gone")


async def test_a_deleted_or_cleared_session_starts_over(store: SessionStore) -> None:
    for n in range(1, FOLD_EVERY + 4):
        await store.write_turn(turn("again", n))
    await store.delete("again")
    await store.write_turn(turn("again", 100))
    await assert_exact(store, "again")
    assert await stored_tallies(store, "again") == {"llama3.2": Tally(1, 2, 1)}
    await store.clear_all()
    await store.write_turn(turn("again", 101, extra=1))
    await assert_exact(store, "again")
    assert await stored_tallies(store, "again") == {"llama3.2": Tally(1, 3, 1)}


# -- against a count over every turn ----------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_history_window_equals_a_count_over_every_turn(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random histories over three models, with duplicates, writes that die before their
    turn or before their fold (some delivered again, some not) and a session's tallies
    dropped or never kept: at random budgets and caps, assembly answers what a count over
    every turn says, and the tallies stay consistent."""
    rng = random.Random(seed)
    sessions = [f"r{seed}-{k}" for k in range(3)]
    written: list[TurnRecord] = []
    for n in range(1, 241):
        session_id = rng.choice(sessions)
        record = turn(
            session_id,
            n,
            model=rng.choice(MODELS),
            extra=rng.choice([0, 0, 1, 3]),
            system=rng.random() < 0.05,
            words=rng.choice([1, 5, 30]),
        )
        roll = rng.random()
        if roll < 0.1:
            crash_once(store, monkeypatch, "insert" if roll < 0.05 else "fold")
            with contextlib.suppress(Crash):
                await store.write_turn(record)
            monkeypatch.undo()
            if rng.random() < 0.5:
                await store.write_turn(record)  # delivered again
        else:
            assert await store.write_turn(record) is WriteOutcome.STORED
        if await store.turns.find_one({"_id": record.request_id}) is not None:
            written.append(record)
        if rng.random() < 0.1:
            assert await store.write_turn(rng.choice(written)) is WriteOutcome.DUPLICATE
        if rng.random() < 0.02:
            # As a session from before tallies, or one whose tallies were dropped.
            await store.sessions.update_one(
                {"_id": rng.choice(sessions)}, {"$unset": {"tallies": ""}}
            )
        if n % 60 == 0:
            for session_id in sessions:
                await assert_windows_exact(store, session_id, rng, tries=2)
    for session_id in sessions:
        await assert_windows_exact(store, session_id, rng)
        if await stored_tallies(store, session_id) is not None:
            await assert_consistent(store, session_id)
            await assert_exact(store, session_id)


# -- summaries ------------------------------------------------------------------------------


async def test_summaries_count_messages_from_the_tallies(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session with tallies is summarised from them and the few turns they do not cover
    yet, without a scan; one without is counted by the server; both say what a count over
    the turns says."""
    for n in range(1, FOLD_EVERY + 11):
        await store.write_turn(turn("counted", n, model=MODELS[n % 3], extra=n % 2))
    for n in range(1, 11):
        await store.write_turn(turn("legacy", n, extra=n % 3))
    await store.sessions.update_one({"_id": "legacy"}, {"$unset": {"tallies": ""}})
    every = await store.turns.find({"session_id": "counted"}).to_list()
    total = sum(d["message_count"] for d in every)
    aggregate = store.turns.aggregate
    scanned: list[Any] = []

    async def counted(pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        scanned.append(pipeline[0]["$match"]["session_id"])
        return await aggregate(pipeline, *args, **kwargs)

    monkeypatch.setattr(store.turns, "aggregate", counted)
    listed = {
        s["session_id"]: s["message_count"] for s in (await store.list_sessions(10, 0))["sessions"]
    }
    assert listed == {"counted": total, "legacy": 30}
    assert scanned == [{"$in": ["legacy"]}]
    assert (await store.rename("counted", "renamed"))["message_count"] == total
    # A number taken by a write that died before storing its turn changes nothing.
    await store.sessions.update_one({"_id": "counted"}, {"$inc": {"turn_seq": 1}})
    assert (await store.rename("counted", "again"))["message_count"] == total
    await store.fold_tallies("counted", FOLD_EVERY * 2)
    assert (await store.rename("counted", "folded"))["message_count"] == total
    assert len(scanned) == 1
