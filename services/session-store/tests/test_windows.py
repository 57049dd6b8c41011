"""Assembly's window of a session's newest turns, kept in memory by the store that writes them
(windows.py): what it answers must be exactly what a read of the database answers, through
writes of several models, system prompts, another writer, a duplicate, deletes and windows of
every size; and it must be used, so a turn's assembly reads no turns."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.ids import new_id
from corral_session_store import windows as windows_module
from corral_session_store.store import Document, HistoryWindow, SessionStore, TurnRecord
from corral_session_store.tokens import TokenEstimator
from corral_session_store.windows import WindowCache

T0 = datetime(2025, 8, 5, 14, 0, tzinfo=UTC)
MODELS = ("llama3.2", "qwen2.5:0.5b")
ESTIMATOR = TokenEstimator()


def turn(session_id: str, n: int, model: str, *, system: bool = False) -> TurnRecord:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": f"system {n}"})
    messages.append({"role": "user", "content": f"question {n} " + "word " * (n % 7)})
    messages.append({"role": "assistant", "content": f"answer {n}", "thinking": "hm"})
    at = T0 + timedelta(seconds=n)
    return TurnRecord(
        request_id=new_id(),
        session_id=session_id,
        model=model,
        kind="chat",
        messages=messages,
        asked_at=at,
        answered_at=at,
    )


def reads(source: str) -> float:
    return REGISTRY.get_sample_value("corral_session_window_reads_total", {"source": source}) or 0


async def both(
    store: SessionStore, fresh: SessionStore, session_id: str, model: str, budget: int, cap: int
) -> HistoryWindow:
    """The window as `store` answers it (its cache, when it may) and as a store that has never
    written the session reads it from the database; they must be equal."""
    session = await store.find_session(session_id)
    cached = await store.history_window(
        session_id, model, budget, ESTIMATOR, session, max_messages=cap
    )
    read = await fresh.history_window(
        session_id, model, budget, ESTIMATOR, dict(session or {}), max_messages=cap
    )
    assert cached == read
    return cached


async def test_the_window_is_what_the_database_holds(
    store: SessionStore, database: AsyncDatabase[Document]
) -> None:
    other = SessionStore(database)  # another process: another writer, and the reference
    rng = random.Random(15)
    session_id = new_id()
    for n in range(400):
        model = rng.choice(MODELS)
        writer = other if rng.random() < 0.05 else store
        await writer.write_turn(turn(session_id, n, model, system=rng.random() < 0.05))
        if rng.random() < 0.02:
            # A duplicate delivered as new: refused by the insert, its number left unused.
            record = turn(session_id, n, model)
            await store.write_turn(record)
            await store.write_turn(record, look_first=False)
        if rng.random() < 0.01:
            await store.delete(session_id)
        budget = rng.choice([40, 200, 4000, 100_000])
        cap = rng.choice([0, 3, 50, 1000])
        for model in MODELS:
            await both(store, SessionStore(database), session_id, model, budget, cap)


async def test_a_turn_after_a_turn_written_here_reads_no_turns(store: SessionStore) -> None:
    session_id = new_id()
    for n in range(30):
        await store.write_turn(turn(session_id, n, MODELS[0]))
    session = await store.find_session(session_id)
    await store.history_window(session_id, MODELS[0], 4000, ESTIMATOR, session, max_messages=50)
    for n in range(30, 40):
        await store.write_turn(turn(session_id, n, MODELS[0]))
        session = await store.find_session(session_id)
        before = reads("database"), reads("cache")
        window = await store.history_window(
            session_id, MODELS[0], 4000, ESTIMATOR, session, max_messages=50
        )
        assert (reads("database"), reads("cache")) == (before[0], before[1] + 1)
        # The 25 turns that fit, and the one that did not (where assembly stops).
        assert len(window.turns) == 26 and window.older_turns == n + 1 - 26
        assert window.turns[-1][0]["content"].startswith(f"question {n} ")
        # What goes back to the backend: no thinking.
        assert "thinking" not in window.turns[-1][-1]


def cached(windows: WindowCache, session_id: str, messages: list[Document]) -> None:
    """A quiet read of (session, "m") numbered (0, 1] kept, as assembly keeps one."""
    windows.taken(session_id, 1)
    read = windows.begin(session_id)
    windows.finish(read, "m", 1, None, 0, [{"seq": 1, "messages": messages, "message_count": 1}])


def test_windows_are_bounded_in_number_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(windows_module, "MAX_WINDOWS", 3)
    monkeypatch.setattr(windows_module, "MAX_CHARS", 400)
    windows = WindowCache()
    for n in range(5):
        cached(windows, f"s{n}", [{"role": "user", "content": "x" * 10}])
    # The least recently used went first.
    assert len(windows) == 3 and windows.chars == 30
    assert windows.window("s0", "m", 1, None) is None
    assert windows.window("s4", "m", 1, None) is not None
    # One window larger than a quarter of the bound is not kept; a few large ones push out
    # the others.
    cached(windows, "big", [{"role": "user", "content": "x", "images": ["i" * 200]}])
    assert windows.window("big", "m", 1, None) is None
    for n in range(3):
        cached(windows, f"l{n}", [{"role": "user", "content": "x" * 90}])
    assert windows.chars <= 400 and len(windows) == 3
    windows.drop("l2")
    assert windows.chars == 180 and len(windows) == 2


def test_a_read_a_write_overlapped_is_not_kept() -> None:
    windows = WindowCache()
    windows.taken("s", 1)
    read = windows.begin("s")
    windows.write_begins("s")
    windows.write_ends("s")
    windows.finish(read, "m", 1, None, 0, [])
    assert windows.window("s", "m", 1, None) is None
    # Nor one whose newest number another process took.
    windows.taken("s", 1)
    windows.finish(windows.begin("s"), "m", 2, None, 0, [])
    assert windows.window("s", "m", 2, None) is None
    windows.finish(windows.begin("s"), "m", 1, None, 0, [])
    assert windows.window("s", "m", 1, None) is not None
