"""The lane's ordering and positions (pure bookkeeping)."""

from __future__ import annotations

import asyncio

from corral_scheduler.lane import Entry, Lane
from services.scheduler.tests import fakes


def entry(request_id: str, connection_epoch: int = 0) -> Entry:
    return fakes.entry(fakes.job(request_id), connection_epoch=connection_epoch)


async def test_pop_is_fifo() -> None:
    lane = Lane()
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    assert [(await lane.pop()).request_id for _ in range(3)] == ["a", "b", "c"]
    assert len(lane) == 0


async def test_pop_waits_for_a_push() -> None:
    lane = Lane()
    popping = asyncio.Event()

    async def pop() -> Entry:
        popping.set()
        return await lane.pop()  # runs on, in the same step, until it blocks on the empty lane

    popped = asyncio.create_task(pop())
    await popping.wait()
    assert not popped.done()
    lane.push(entry("late"))
    assert (await popped).request_id == "late"


def test_positions_count_the_running_job() -> None:
    lane = Lane()
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    assert [(e.request_id, p) for e, p in lane.positions(running=True)] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    assert [p for _, p in lane.positions(running=False)] == [0, 1, 2]


def test_remove_moves_everyone_behind_up() -> None:
    lane = Lane()
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    removed = lane.remove("b")
    assert removed is not None and removed.request_id == "b"
    assert lane.remove("b") is None
    assert [(e.request_id, p) for e, p in lane.positions(running=True)] == [("a", 1), ("c", 2)]


def test_positions_never_increase_as_the_lane_drains() -> None:
    lane = Lane()
    for i in range(10):
        lane.push(entry(f"r{i}"))
    seen: dict[str, list[int]] = {}
    running = False
    while len(lane):
        for e, p in lane.positions(running=running):
            seen.setdefault(e.request_id, []).append(p)
        if running:
            running = False  # the running job finished
        else:
            lane._waiting.popitem(last=False)  # the head starts
            running = True
    for history in seen.values():
        assert history == sorted(history, reverse=True)


def test_entries_of_an_old_connection_epoch_are_dropped() -> None:
    lane = Lane()
    lane.push(entry("old", connection_epoch=0))
    lane.push(entry("new", connection_epoch=1))
    dropped = lane.drop_epoch_before(1)
    assert [e.request_id for e in dropped] == ["old"]
    assert "new" in lane and "old" not in lane


async def test_order_follows_arrival_not_push_order() -> None:
    # After a failover, redelivered jobs are pushed when their admission awaits finish, which
    # need not be the order they were delivered in.
    lane = Lane()
    first, second, third = entry("a"), entry("b"), entry("c")
    for pushed in (first, third, second):
        lane.push(pushed)
    assert [(await lane.pop()).request_id for _ in range(3)] == ["a", "b", "c"]


async def forever() -> None:
    await asyncio.Event().wait()


async def test_positions_and_waits_come_from_one_snapshot() -> None:
    """Every reader (the broadcaster, admission's first answer and retry hint, the status)
    takes positions and waits from `Lane.snapshot`: the running job ahead of everyone, each
    job's wait what is left of it plus the estimates ahead."""
    lane = Lane()
    for rid, estimate in (("a", 100), ("b", 200), ("c", 50)):
        one = entry(rid)
        one.estimate_ms = estimate
        lane.push(one)
    assert [(p.entry.request_id, p.position, p.wait_ms) for p in lane.snapshot()] == [
        ("a", 0, 0),
        ("b", 1, 100),
        ("c", 2, 300),
    ]
    head = await lane.pop()
    head.estimate_ms = 10**9  # far from done, whatever the clock says
    task = asyncio.create_task(forever())
    try:
        lane.start(head, task)
        placed = lane.snapshot()
        assert [(p.entry.request_id, p.position) for p in placed] == [("b", 1), ("c", 2)]
        assert placed[1].wait_ms - placed[0].wait_ms == 200
        assert placed[0].wait_ms > 0  # what is left of the running job
        c = lane.placement("c")
        assert c is not None and c.position == 2
        assert lane.placement("a") is None  # running, not waiting
        assert lane.cancel_running("a", "client left") and lane.running is not None
        assert lane.running.cancel_reason == "client left"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lane.finish()
    assert lane.running is None and lane.processing_rate() > 0


async def test_a_new_connection_epoch_drops_the_waiting_and_stops_the_running() -> None:
    lane = Lane()
    lane.push(entry("waiting"))
    running = entry("running")
    task = asyncio.create_task(forever())
    lane.start(running, task)
    dropped = lane.new_connection_epoch()
    assert [e.request_id for e in dropped] == ["waiting"]
    assert lane.is_stale(running) and lane.connection_epoch == 1
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert lane.running is not None and lane.running.cancel_reason == "broker connection lost"
