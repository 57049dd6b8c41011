"""The sessions' counts the store broadcasts for the gateways' /health (`sessions {active, total,
archived_today}`), over a real MongoDB-protocol server: counted in the background, carried on
the status broadcast and the store's own /health, the last count kept when one fails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo.errors import PyMongoError

from corral_common.broker import Broker
from corral_common.messages import StoreStatus
from corral_common.settings import CorralSettings
from corral_session_store.health import MongoState, SessionCounter, StatusBroadcaster
from corral_session_store.store import SessionStore

NOON = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def test_counts_active_total_and_archived_today(store: SessionStore) -> None:
    ids = [(await store.create_session(None, title=f"s{n}"))["session_id"] for n in range(5)]
    # Two archived this morning, one yesterday evening, two still active.
    archived_at = [NOON - timedelta(hours=h) for h in (1, 11, 13)]
    for session_id, at in zip(ids[:3], archived_at, strict=True):
        await store.sessions.update_one({"_id": session_id}, {"$set": {"archived_at": at}})
    state = MongoState()
    counter = SessionCounter(store, state, interval_s=60, timeout_s=5, clock=lambda: NOON)
    counts = await counter.count_once()
    assert counts is not None
    assert (counts.active, counts.total, counts.archived_today) == (2, 5, 2)
    assert counts.counted_at == NOON.timestamp()
    assert state.sessions == counts


async def test_a_resumed_session_is_active_again(store: SessionStore) -> None:
    session_id = (await store.create_session(None, title="s"))["session_id"]
    await store.sessions.update_one({"_id": session_id}, {"$set": {"archived_at": NOON}})
    assert await store.session_counts(NOON) == (0, 1, 1)
    assert await store.resume(session_id)
    assert await store.session_counts(NOON) == (1, 1, 0)


class FailingStore(SessionStore):
    async def session_counts(self, now: datetime) -> tuple[int, int, int]:
        raise PyMongoError("disk full")


async def test_a_failed_count_keeps_the_last(store: SessionStore) -> None:
    await store.create_session(None, title="s")
    state = MongoState()
    first = await SessionCounter(store, state, interval_s=60, timeout_s=5).count_once()
    assert first is not None and first.total == 1
    failing = FailingStore(store.db)
    assert await SessionCounter(failing, state, interval_s=60, timeout_s=5).count_once() is None
    assert state.sessions == first


async def test_the_broadcast_carries_the_counts(store: SessionStore) -> None:
    state = MongoState()
    broadcaster = StatusBroadcaster(Broker(CorralSettings(), "test"), state, "s1", interval_s=1)
    assert broadcaster.snapshot().sessions is None
    await store.create_session(None, title="s")
    await SessionCounter(store, state, interval_s=60, timeout_s=5, clock=lambda: NOON).count_once()
    wire = StoreStatus.model_validate_json(broadcaster.snapshot().model_dump_json())
    assert wire.sessions is not None
    assert (wire.sessions.active, wire.sessions.total, wire.sessions.archived_today) == (1, 1, 0)
