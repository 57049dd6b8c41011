"""Per-model tallies on the session: assembly's count of the turns it left out comes from them,
not from a scan of the history. They must stay exact through retries, duplicates, crashes
between a turn and its tally, out-of-order writers, imports, deletes and sessions written
before tallies existed, and assembly must answer exactly what a count over every turn says."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from corral_common.contracts.session_store import ImportParams
from corral_common.ids import new_id
from corral_session_store.store import (
    BACKEND_KEYS,
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


async def actual_tallies(store: SessionStore, session_id: str) -> dict[str, Tally]:
    """What the tallies must say once every turn is counted: counted over every stored turn
    of the session, up to its newest."""
    every = await store.turns.find({"session_id": session_id}).to_list()
    newest = max((int(doc["seq"]) for doc in every), default=0)
    found: dict[str, Tally] = {}
    for doc in every:
        was = found.get(doc["model"], Tally(seq=newest))
        found[doc["model"]] = Tally(was.turns + 1, was.messages + int(doc["message_count"]), newest)
    return found


def copied(exported: Document, session_id: str) -> ImportParams:
    """An export imported as another session (its turns under new ids: ids are global)."""
    exported["session"]["session_id"] = session_id
    for item in exported["turns"]:
        item["id"] = new_id()
    return ImportParams.model_validate(exported)


async def stored_tallies(store: SessionStore, session_id: str) -> dict[str, Tally] | None:
    session = await store.sessions.find_one({"_id": session_id})
    assert session is not None
    if tally_of(session, "") is None:
        return None
    return {
        entry["model"]: Tally(entry["turns"], entry["messages"], session["tallied"])
        for entry in session["tallies"]
    }


async def assert_exact(store: SessionStore, session_id: str) -> None:
    """The session's tallies count exactly its stored turns (for models with turns up to
    their newest; a model without a tally has none)."""
    stored = await stored_tallies(store, session_id)
    assert stored is not None, "the session keeps no tallies"
    assert stored == await actual_tallies(store, session_id)


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
    """A write stopped between its turn and its tally."""


def crash_before_tally(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next new turn written is stored, then the writer dies before its tally."""
    original = store._tally

    async def dying(*args: Any, new: bool, **kwargs: Any) -> None:
        if new:
            monkeypatch.setattr(store, "_tally", original)
            raise Crash
        await original(*args, new=new, **kwargs)

    monkeypatch.setattr(store, "_tally", dying)


def count_recounts(store: SessionStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often assembly counts with the server: every model (`recount`), the model's turns
    below the window (`count_older`: a scan), or only those the tallies have not reached
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


async def test_each_model_has_its_tally(store: SessionStore) -> None:
    for n in range(1, 13):
        model = MODELS[n % 2]
        await store.write_turn(turn("m", n, model=model, extra=n % 3, system=n == 1))
    await assert_exact(store, "m")
    tallies = await stored_tallies(store, "m")
    assert tallies is not None and set(tallies) == set(MODELS[:2])
    assert tallies["llama3.2"] == Tally(6, 2 * 6 + (1 + 0 + 2 + 1 + 0 + 2), 12)


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
        window = await store.history_window("long", model, 100, estimator)
        assert window.older_turns == 100 - len(window.turns) and window.older_turns > 50
    assert calls == []


async def test_turns_written_one_after_another_are_counted_without_reading_any(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.write_turn(turn("quick", 1))
    find = store.turns.find
    ranges: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        if "seq" in (args[0] if args else kwargs.get("filter") or {}):
            ranges.append(args)  # not the duplicate check (`find_one` by id)
        return find(*args, **kwargs)

    monkeypatch.setattr(store.turns, "find", counted)
    for n in range(2, 6):
        await store.write_turn(turn("quick", n, model=MODELS[n % 2]))
    assert ranges == []
    await assert_exact(store, "quick")


async def test_a_new_session_starts_with_empty_tallies(store: SessionStore) -> None:
    created = await store.create_session("alice", title="empty")
    assert await stored_tallies(store, created["session_id"]) == {}
    await store.write_turn(turn("fresh", 1))
    assert await stored_tallies(store, "fresh") == {"llama3.2": Tally(1, 2, 1)}


async def test_a_duplicate_counts_once(store: SessionStore) -> None:
    first = turn("d", 1)
    assert await store.write_turn(first) is WriteOutcome.STORED
    assert await store.write_turn(first) is WriteOutcome.DUPLICATE
    again = turn("d", 2)
    # The same turn delivered many times at once: one is stored, the rest are duplicates.
    outcomes = await asyncio.gather(*(store.write_turn(again) for _ in range(8)))
    assert outcomes.count(WriteOutcome.STORED) == 1
    assert await store.write_turn(first) is WriteOutcome.DUPLICATE
    if await stored_tallies(store, "d") is None:
        # A duplicate counted the turn before its own writer could: that writer cannot tell
        # it from an out-of-order one and drops the tallies; the next assembly recounts.
        window = await store.history_window("d", "llama3.2", 1, TokenEstimator())
        assert window.older_turns == 1 and window.older_messages == 2
    await assert_exact(store, "d")
    doc = await store.turns.find_one({"_id": again.request_id})
    assert doc is not None
    assert await stored_tallies(store, "d") == {"llama3.2": Tally(2, 4, doc["seq"])}
    assert await store.write_turn(again) is WriteOutcome.DUPLICATE
    assert await stored_tallies(store, "d") == {"llama3.2": Tally(2, 4, doc["seq"])}


async def test_a_write_that_died_before_its_tally_is_completed_by_its_redelivery(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.write_turn(turn("c", 1))
    dying = turn("c", 2, extra=1)
    crash_before_tally(store, monkeypatch)
    with pytest.raises(Crash):
        await store.write_turn(dying)
    assert await stored_tallies(store, "c") == {"llama3.2": Tally(1, 2, 1)}  # behind
    assert await store.write_turn(dying) is WriteOutcome.DUPLICATE
    await assert_exact(store, "c")
    assert await store.write_turn(dying) is WriteOutcome.DUPLICATE
    await store.write_turn(turn("c", 3))
    await assert_exact(store, "c")


async def test_a_turn_left_uncounted_is_counted_by_the_next_write(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.write_turn(turn("u", 1))
    crash_before_tally(store, monkeypatch)
    with pytest.raises(Crash):
        await store.write_turn(turn("u", 2, extra=2))
    # Never redelivered; the model's next turn counts it with its own.
    await store.write_turn(turn("u", 3))
    await assert_exact(store, "u")
    assert await stored_tallies(store, "u") == {"llama3.2": Tally(3, 2 + 4 + 2, 3)}


async def test_lagging_tallies_count_only_what_they_have_not_reached(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest turn went uncounted (and was never redelivered): assembly that stops above
    the tallies counts the turns between them and the window, and answers the same."""
    for n in range(1, 6):
        await store.write_turn(turn("lag", n, words=20))
    crash_before_tally(store, monkeypatch)
    with pytest.raises(Crash):
        await store.write_turn(turn("lag", 6, words=20))
    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    expected = await brute_force(store, "lag", "llama3.2", 30, estimator, None)
    assert expected.older_turns > 0
    window = await store.history_window("lag", "llama3.2", 30, estimator)
    assert seen(window) == expected
    assert calls == {"recount": 0, "count_older": 0, "between": 1}


async def test_out_of_order_writers_drop_the_tallies(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers in one session: the first takes its number, the second is stored and
    counted before the first is stored. The first cannot know whether it was counted, so the
    tallies go, and the next assembly that needs them counts once and sets them again."""
    for n in range(1, 4):
        await store.write_turn(turn("o", n))
    slow = turn("o", 4, extra=1)
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
    assert await store.write_turn(turn("o", 5)) is WriteOutcome.STORED
    go_on.set()
    assert await first is WriteOutcome.STORED
    assert await stored_tallies(store, "o") is None

    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    expected = await brute_force(store, "o", "llama3.2", 20, estimator, None)
    assert expected.older_turns > 0
    assert seen(await store.history_window("o", "llama3.2", 20, estimator)) == expected
    await assert_exact(store, "o")
    assert seen(await store.history_window("o", "llama3.2", 20, estimator)) == expected
    assert calls["recount"] == 1


# -- sessions from before tallies -----------------------------------------------------------


async def test_a_session_without_tallies_is_counted_once(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 31):
        await store.write_turn(turn("old", n, model=MODELS[n % 3], extra=n % 2, words=10))
    # As written before tallies existed.
    await store.sessions.update_one({"_id": "old"}, {"$unset": {"tallies": "", "tally_rev": ""}})
    await store.write_turn(turn("old", 31, model=MODELS[0]))  # a write does not start them
    assert await stored_tallies(store, "old") is None

    calls = count_recounts(store, monkeypatch)
    estimator = TokenEstimator()
    expected = await brute_force(store, "old", MODELS[1], 50, estimator, None)
    assert expected.older_turns > 0
    assert seen(await store.history_window("old", MODELS[1], 50, estimator)) == expected
    await assert_exact(store, "old")
    assert calls["recount"] == 1
    for model in MODELS:
        expected = await brute_force(store, "old", model, 50, estimator, 4)
        assert seen(await store.history_window("old", model, 50, estimator, max_messages=4)) == (
            expected
        )
    assert calls == {"recount": 1, "count_older": 0, "between": 0}
    await store.write_turn(turn("old", 32, model=MODELS[2]))
    await assert_exact(store, "old")


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
    for n in range(1, 11):
        await store.write_turn(turn("src", n, model=MODELS[n % 2], extra=n % 3))
    params = copied(await store.export("src"), "copy")
    restored = await store.import_session(params, None)
    assert restored["turns_imported"] == 10
    await assert_exact(store, "copy")
    source, copy = await stored_tallies(store, "src"), await stored_tallies(store, "copy")
    assert source is not None and copy is not None
    assert {m: (t.turns, t.messages) for m, t in copy.items()} == {
        m: (t.turns, t.messages) for m, t in source.items()
    }
    again = await store.import_session(params, None)
    assert again["turns_skipped"] == 10
    assert await stored_tallies(store, "copy") == copy
    await assert_windows_exact(store, "copy", random.Random(7))


async def test_an_import_into_a_session_with_turns_adds_to_its_tallies(
    store: SessionStore,
) -> None:
    for n in range(1, 4):
        await store.write_turn(turn("into", n))
    for n in range(1, 6):
        await store.write_turn(turn("other", n, model=MODELS[1]))
    imported = await store.import_session(copied(await store.export("other"), "into"), None)
    assert imported["turns_imported"] == 5
    await assert_exact(store, "into")
    tallies = await stored_tallies(store, "into")
    assert tallies is not None
    assert {m: t.turns for m, t in tallies.items()} == {MODELS[0]: 3, MODELS[1]: 5}


async def test_an_interrupted_delete_leaves_no_wrong_tally(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(1, 9):
        await store.write_turn(turn("gone", n, words=20))

    async def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(store.sessions, "delete_one", interrupted)
    with pytest.raises(Crash):
        await store.delete("gone")
    monkeypatch.undo()
    # The session is still there, its turns are not; a chat uses it again.
    for n in range(9, 15):
        await store.write_turn(turn("gone", n, words=20))
    estimator = TokenEstimator()
    expected = await brute_force(store, "gone", "llama3.2", 40, estimator, None)
    assert seen(await store.history_window("gone", "llama3.2", 40, estimator)) == expected
    assert expected.older_turns + len(expected.turns) == 6
    await assert_exact(store, "gone")


async def test_a_deleted_or_cleared_session_starts_over(store: SessionStore) -> None:
    for n in range(1, 4):
        await store.write_turn(turn("again", n))
    await store.delete("again")
    await store.write_turn(turn("again", 4))
    assert await stored_tallies(store, "again") == {"llama3.2": Tally(1, 2, 1)}
    await store.clear_all()
    await store.write_turn(turn("again", 5, extra=1))
    assert await stored_tallies(store, "again") == {"llama3.2": Tally(1, 3, 1)}


# -- against a count over every turn ----------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_history_window_equals_a_count_over_every_turn(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Random histories over three models, with duplicates, writes that die before their
    tally (some redelivered, some not) and a session's tallies dropped or never kept: at
    random budgets and caps, assembly answers what a count over every turn says."""
    rng = random.Random(seed)
    sessions = [f"r{seed}-{k}" for k in range(3)]
    written: list[TurnRecord] = []
    for n in range(1, 121):
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
        if roll < 0.08:
            crash_before_tally(store, monkeypatch)
            with pytest.raises(Crash):
                await store.write_turn(record)
            if rng.random() < 0.5:
                assert await store.write_turn(record) is WriteOutcome.DUPLICATE
        else:
            assert await store.write_turn(record) is WriteOutcome.STORED
        written.append(record)
        if rng.random() < 0.1:
            assert await store.write_turn(rng.choice(written)) is WriteOutcome.DUPLICATE
        if rng.random() < 0.03:
            # As a session from before tallies, or one whose tallies were dropped.
            await store.sessions.update_one(
                {"_id": rng.choice(sessions)}, {"$unset": {"tallies": ""}}
            )
        if n % 40 == 0:
            for session_id in sessions:
                await assert_windows_exact(store, session_id, rng, tries=2)
    for session_id in sessions:
        await assert_windows_exact(store, session_id, rng)


# -- summaries ------------------------------------------------------------------------------


async def test_summaries_count_messages_from_the_tallies(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose tallies count every turn it has is summarised without a scan; one
    without (from before tallies, or with a turn not yet counted) is counted by the server;
    both say what a count over the turns says."""
    for n in range(1, 11):
        await store.write_turn(turn("counted", n, model=MODELS[n % 3], extra=n % 2))
        await store.write_turn(turn("legacy", n, extra=n % 3))
    await store.sessions.update_one({"_id": "legacy"}, {"$unset": {"tallies": ""}})
    aggregate = store.turns.aggregate
    scanned: list[Any] = []

    async def counted(pipeline: Any, *args: Any, **kwargs: Any) -> Any:
        scanned.append(pipeline[0]["$match"]["session_id"])
        return await aggregate(pipeline, *args, **kwargs)

    monkeypatch.setattr(store.turns, "aggregate", counted)
    listed = {
        s["session_id"]: s["message_count"] for s in (await store.list_sessions(10, 0))["sessions"]
    }
    assert listed == {"counted": 25, "legacy": 30}
    assert scanned == [{"$in": ["legacy"]}]
    renamed = await store.rename("counted", "renamed")
    assert renamed["message_count"] == 25
    assert len(scanned) == 1
    # A number taken by a write that died before storing its turn: not every number is
    # counted, so the server counts.
    await store.sessions.update_one({"_id": "counted"}, {"$inc": {"turn_seq": 1}})
    assert (await store.rename("counted", "again"))["message_count"] == 25
    assert scanned[-1] == {"$in": ["counted"]}
