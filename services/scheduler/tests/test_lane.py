"""The lane's bookkeeping: the order jobs are handed to servers, positions and waits, and a
pool's servers each holding at most one job (pure bookkeeping, no backend)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Iterable
from typing import Any

import pytest

from corral_scheduler.eta import SpeedBook
from corral_scheduler.lane import ONE_BACKEND, Entry, Lane, Placed, Running, Server
from corral_scheduler.ordering import Ordering, OrderingPolicy
from services.scheduler.tests import fakes


def entry(request_id: str, connection_epoch: int = 0, **fields: object) -> Entry:
    return fakes.entry(fakes.job(request_id, **fields), connection_epoch=connection_epoch)


def only(lane: Lane) -> Server:
    return lane.servers[ONE_BACKEND]


async def drain(lane: Lane) -> list[str]:
    """Run every waiting job on the one server, in the order it is handed them."""
    ran = []
    while len(lane):
        running = await lane.take(only(lane))
        ran.append(running.entry.request_id)
        lane.finish(running)
    return ran


async def run_next(lane: Lane, server: Server) -> Running:
    """Take the server's next job and start it, as its executor loop does."""
    running = await lane.take(server)
    lane.start(running, asyncio.create_task(forever()), running.entry.estimate_ms)
    return running


async def forever() -> None:
    await asyncio.Event().wait()


async def stop(running: Running) -> None:
    assert running.task is not None
    running.task.cancel()
    await asyncio.gather(running.task, return_exceptions=True)


async def test_jobs_are_handed_out_in_order() -> None:
    lane = Lane()
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    assert await drain(lane) == ["a", "b", "c"]
    assert len(lane) == 0


async def test_a_waiting_server_is_handed_the_next_push_at_once() -> None:
    lane = Lane()
    asked = lane.ask(only(lane))
    assert only(lane).free and not asked.done()
    lane.push(entry("late"))
    # Assigned by the push itself: the server holds it before its executor even wakes.
    assert only(lane).running is not None and len(lane) == 0
    assert (await asked).entry.request_id == "late"


async def test_a_busy_server_is_handed_nothing_until_it_asks() -> None:
    lane = Lane()
    lane.push(entry("a"))
    first = await run_next(lane, only(lane))
    lane.push(entry("b"))
    assert len(lane) == 1 and only(lane).running is first
    lane.finish(first)
    await stop(first)
    assert len(lane) == 1  # finished, but its executor has not asked for the next yet
    assert (await lane.take(only(lane))).entry.request_id == "b"


def test_positions_count_from_one_and_only_fall() -> None:
    lane = Lane()
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    assert [(p.entry.request_id, p.position) for p in lane.snapshot()] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    lane.remove("b")
    assert [(p.entry.request_id, p.position) for p in lane.snapshot()] == [("a", 1), ("c", 2)]


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
    assert await drain(lane) == ["a", "b", "c"]


async def test_positions_and_waits_come_from_one_snapshot() -> None:
    """Every reader (the broadcaster, admission's first answer and retry hint, the status)
    takes positions and waits from `Lane.snapshot`: each job's wait what is left of the
    running job plus the estimates ahead."""
    lane = Lane()
    for rid, estimate in (("a", 10**9), ("b", 200), ("c", 50)):
        one = entry(rid)
        one.estimate_ms = estimate
        lane.push(one)
    head = await run_next(lane, only(lane))
    try:
        placed = lane.snapshot()
        assert [(p.entry.request_id, p.position) for p in placed] == [("b", 1), ("c", 2)]
        assert placed[1].wait_ms - placed[0].wait_ms == 200
        assert placed[0].wait_ms > 0  # what is left of the running job
        c = lane.placement("c")
        assert c is not None and c.position == 2
        assert lane.placement("a") is None  # running, not waiting
        assert lane.cancel_running("a", "client left")
        assert head.cancel_reason == "client left"
    finally:
        await stop(head)
    lane.finish(head)
    assert lane.running_jobs() == [] and lane.processing_rate() > 0


async def test_a_load_is_charged_once_per_swap_along_the_order() -> None:
    lane = Lane()
    only(lane).loaded = "a"
    for rid, model in (("1", "a"), ("2", "b"), ("3", "b"), ("4", "a")):
        one = entry(rid, model=model)
        one.estimate_ms, one.load_ms = 100, 1000
        lane.push(one)
    lane.pause()  # keep them all waiting
    assert [p.wait_ms for p in lane.snapshot()] == [0, 100, 1200, 1300]


async def test_a_new_connection_epoch_drops_the_waiting_and_stops_the_running() -> None:
    lane = Lane()
    lane.push(entry("running"))
    running = await run_next(lane, only(lane))
    lane.push(entry("waiting"))
    dropped = lane.new_connection_epoch()
    assert [e.request_id for e in dropped] == ["waiting"]
    assert lane.is_stale(running.entry) and lane.connection_epoch == 1
    assert running.task is not None
    await asyncio.gather(running.task, return_exceptions=True)
    assert running.task.cancelled()
    assert running.cancel_reason == "broker connection lost"


async def test_a_cancel_between_assignment_and_start_takes_effect_at_start() -> None:
    lane = Lane()
    lane.push(entry("a"))
    running = await lane.take(only(lane))
    assert lane.cancel_running("a", "client left")  # assigned, its task not started yet
    task = asyncio.create_task(forever())
    lane.start(running, task, 0)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_a_stopped_taker_returns_an_assigned_job_to_the_lane() -> None:
    lane = Lane()
    server = only(lane)
    lane.ask(server)
    lane.push(entry("a"))  # assigned to the server...
    lane.withdraw(server)  # ...whose executor is stopped before it wakes
    assert "a" in lane and server.running is None and not server.free


# A pool.


def pool(*names: str, group_bound: int = 2) -> Lane:
    ordering = Ordering(OrderingPolicy(fair_share=False, group_bound=group_bound), lambda: 0.0)
    return Lane(ordering, servers=names)


class Takers:
    """Every server of a pool asking for its next job, as their executor loops do."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        for server in lane.servers.values():
            lane.ask(server)

    def holding(self) -> dict[str, str | None]:
        return {
            name: s.running.entry.request_id if s.running else None
            for name, s in self.lane.servers.items()
        }

    async def close(self) -> None:
        for server in self.lane.servers.values():
            self.lane.withdraw(server)


async def test_a_pool_runs_one_job_per_server_at_once() -> None:
    lane = pool("x", "y")
    takers = Takers(lane)
    for rid in ("a", "b", "c"):
        lane.push(entry(rid))
    assert takers.holding() == {"x": "a", "y": "b"}
    assert [(p.entry.request_id, p.position) for p in lane.snapshot()] == [("c", 1)]
    await takers.close()


async def test_a_job_goes_to_the_server_holding_its_model() -> None:
    lane = pool("x", "y")
    lane.servers["x"].loaded, lane.servers["y"].loaded = "a", "b"
    takers = Takers(lane)
    lane.push(entry("1", model="b"))
    lane.push(entry("2", model="a"))
    assert takers.holding() == {"x": "2", "y": "1"}
    await takers.close()


async def test_a_swap_happens_on_the_least_recently_used_server() -> None:
    lane = pool("x", "y", "z", group_bound=0)
    for name, model, used in (("x", "a", 5.0), ("y", "b", 1.0), ("z", "c", 3.0)):
        lane.servers[name].loaded, lane.servers[name].last_used = model, used
    takers = Takers(lane)
    lane.push(entry("1", model="d"))
    assert takers.holding() == {"x": None, "y": "1", "z": None}
    await takers.close()


async def test_grouping_lets_each_free_server_take_a_job_for_its_own_model() -> None:
    lane = pool("x", "y", group_bound=2)
    lane.servers["x"].loaded = "a"
    lane.servers["y"].loaded = None
    lane.pause()
    lane.push(entry("1", model="b"))
    lane.push(entry("2", model="a"))
    takers = Takers(lane)
    lane.resume()
    # x holds a and takes the a job from behind the b job; the b job goes to the empty y.
    assert takers.holding() == {"x": "2", "y": "1"}
    await takers.close()


async def test_a_model_only_some_servers_list_goes_only_to_them() -> None:
    lane = pool("x", "y")
    lane.set_models(lane.servers["x"], ["small:1b"])
    lane.set_models(lane.servers["y"], ["small:1b", "big:70b"])
    takers = Takers(lane)
    lane.push(entry("big1", model="big:70b"))
    lane.push(entry("big2", model="big:70b"))
    lane.push(entry("small", model="small:1b"))
    # big2 cannot run on x: small overtakes it there; big2 waits for y.
    assert takers.holding() == {"x": "small", "y": "big1"}
    assert [p.entry.request_id for p in lane.snapshot()] == ["big2"]
    await takers.close()


async def test_a_job_aimed_at_a_server_runs_only_there() -> None:
    lane = pool("x", "y")
    takers = Takers(lane)
    lane.push(entry("1", kind="unload", server="y", payload={"model": "m"}))
    assert takers.holding() == {"x": None, "y": "1"}
    await takers.close()


async def test_a_failed_server_leaves_rotation_and_its_job_goes_to_another() -> None:
    lane = pool("x", "y")
    x, y = lane.servers["x"], lane.servers["y"]
    lane.push(entry("a"))
    running = await lane.take(x)
    assert lane.can_fail_over(x, running.entry)  # y could run it
    lane.set_rotation(x, False)
    lane.requeue(running)
    lane.finish(running, ran=False)
    assert "a" in lane and x.running is None
    assert not lane.can_fail_over(y, running.entry)  # x is out: nowhere else for y's jobs
    assert (await lane.take(y)).entry.request_id == "a"
    lane.set_rotation(x, True)
    lane.push(entry("b"))
    assert (await lane.take(x)).entry.request_id == "b"


def test_servers_can_be_named_and_must_exist() -> None:
    assert list(pool("gpu1", "gpu2").servers) == ["gpu1", "gpu2"]
    with pytest.raises(ValueError, match="at least one server"):
        Lane(servers=())


def activity_of(lane: Lane) -> list[tuple[str, int, list[str], dict[str, float], float | None]]:
    return [
        (a.model, a.running, a.running_on, a.last_used_on, a.last_used_at)
        for a in lane.model_activity()
    ]


async def test_a_models_use_is_told_per_server_and_an_unload_forgets_its_server_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    lane = pool("x", "y")
    x, y = lane.servers["x"], lane.servers["y"]
    # One model under two spellings, one job on each server.
    lane.push(entry("a", model="m", server="x"))
    lane.push(entry("b", model="M:latest", server="y"))
    on_x, on_y = await lane.take(x), await lane.take(y)
    assert activity_of(lane) == [("m:latest", 2, ["x", "y"], {}, None)]
    lane.finish(on_x)
    lane.used(on_x.entry.job, "x")
    assert activity_of(lane) == [("m:latest", 1, ["y"], {"x": 1000.0}, 1000.0)]
    now[0] = 1010.0
    lane.finish(on_y)
    lane.used(on_y.entry.job, "y")
    assert activity_of(lane) == [("m:latest", 0, [], {"x": 1000.0, "y": 1010.0}, 1010.0)]
    # Unloaded from y: x still used it when it did, and the latest use is x's.
    now[0] = 1020.0
    lane.push(entry("u", kind="unload", model="m", server="y", payload={"model": "m"}))
    unload = await lane.take(y)
    assert activity_of(lane) == [("m:latest", 1, ["y"], {"x": 1000.0, "y": 1010.0}, 1010.0)]
    lane.finish(unload)
    lane.used(unload.entry.job, "y")
    assert activity_of(lane) == [("m:latest", 0, [], {"x": 1000.0}, 1000.0)]
    # Unloaded from x as well: no use of it is left to tell.
    lane.push(entry("v", kind="unload", model="m", server="x", payload={"model": "m"}))
    unload = await lane.take(x)
    lane.finish(unload)
    lane.used(unload.entry.job, "x")
    assert activity_of(lane) == []


async def test_a_second_cancel_does_not_cut_the_first_ones_handling_short() -> None:
    """The job's task is cancelled once: its own cancel handling (publishing `cancelled`,
    counting it) must not be interrupted by a second cancel for the same job."""
    lane = Lane()
    lane.push(entry("a"))
    waiting, handled, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    outcome: list[str] = []

    async def job() -> None:
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handled.set()
            await finish.wait()  # as the executor awaits its `cancelled` publish
            outcome.append("cancelled")
            return
        outcome.append("done")

    running = await lane.take(only(lane))
    task = asyncio.create_task(job())
    lane.start(running, task, running.entry.estimate_ms)
    await waiting.wait()
    assert lane.cancel_running("a", "client left")
    await handled.wait()
    assert lane.cancel_running("a", "a stray event's cancel")  # still running: found
    finish.set()
    await task
    assert outcome == ["cancelled"]
    assert running.cancel_reason == "client left"
    lane.finish(running)


def reference(lane: Lane) -> dict[str, tuple[int, int]]:
    """Every waiting job's (position, wait) played afresh, leaving the lane's kept snapshot
    as it was (so what is compared with it is the lane's own bookkeeping)."""
    kept = lane._tail
    fresh = {p.entry.request_id: (p.position, p.wait_ms) for p in lane.snapshot()}
    lane._tail = kept
    return fresh


@pytest.mark.parametrize("servers", [1, 2])
@pytest.mark.parametrize("fair_share", [True, False])
async def test_one_jobs_place_is_the_place_a_whole_snapshot_gives(
    servers: int, fair_share: bool
) -> None:
    """Whatever happens to the lane (jobs of several callers, classes and models pushed,
    cancelled, handed out and finished, the speed book learning), one job's place as the lane
    tells it from its kept snapshot is the place a snapshot played afresh gives it."""
    rng = random.Random(servers * 10 + fair_share)
    speeds = SpeedBook(prompt_tokens_per_s=400, eval_tokens_per_s=15, load_ms=700, eval_count=10)
    lane = Lane(
        Ordering(OrderingPolicy(fair_share=fair_share, group_bound=2), time.monotonic),
        servers=[f"s{i}" for i in range(servers)],
        speeds=speeds,
    )
    running: list[Running] = []
    count = itertools.count()
    for _ in range(250):
        roll = rng.random()
        if roll < 0.6:
            # Mostly one caller, class and model (a crowd), now and then another.
            odd = rng.random() < 0.15
            lane.push(
                entry(
                    f"j{next(count)}",
                    model=rng.choice(["llama3.2", "qwen"]) if odd else "llama3.2",
                    client_key=rng.choice(["a", "b"]) if odd else None,
                    priority=rng.choice(["interactive", "normal", "batch"]) if odd else "normal",
                    prompt_chars=rng.randint(10, 400),
                )
            )
        elif roll < 0.7 and len(lane):
            lane.remove(rng.choice([e.request_id for e in lane]))
        elif roll < 0.8 and len(lane):
            free = [s for s in lane.servers.values() if s.running is None]
            if free:
                running.append(await run_next(lane, rng.choice(free)))
                if servers > 1:
                    # Priced by its tokens from now on, not by the clock: a pool's play lays
                    # jobs onto whichever server frees first, so two plays a moment apart may
                    # differ while the servers' jobs run down unevenly.
                    running[-1].tokens += 1
        elif roll < 0.9 and running:
            done = running.pop(rng.randrange(len(running)))
            await stop(done)
            lane.finish(done)
            if rng.random() < 0.5:
                speeds.observe(done.entry.model, {"eval_count": rng.randint(5, 30)})
        elif running:
            rng.choice(running).tokens += 1
        waiting = [e.request_id for e in lane]
        if not waiting:
            continue
        asked = rng.sample(waiting, min(3, len(waiting)))
        before = time.monotonic()
        told = {rid: lane.placement(rid) for rid in asked}
        fresh = reference(lane)
        # The running jobs' remainders follow the clock: both readings are as of their moment.
        slack_ms = math.ceil((time.monotonic() - before) * 1000) + 1
        for rid, placed in told.items():
            assert placed is not None
            assert placed.position == fresh[rid][0]
            assert abs(placed.wait_ms - fresh[rid][1]) <= slack_ms
    for done in running:
        await stop(done)


def test_a_crowd_pushed_in_a_row_costs_one_snapshot() -> None:
    """Jobs admitted one behind another are each placed from the lane's kept snapshot, not by
    ordering the whole lane again; a change to the lane (a job cancelled) costs one more."""
    lane = Lane()
    orderings = 0
    order = lane.ordering.order

    def counted(entries: Iterable[Any]) -> list[Any]:
        nonlocal orderings
        orderings += 1
        return order(entries)

    lane.ordering.order = counted  # type: ignore[method-assign]

    def push(rid: str) -> Entry:
        one = entry(rid)
        one.estimate_ms = 100
        lane.push(one)
        return one

    for index in range(50):
        push(f"c{index}")
    placed = [lane.placement(f"c{index}") for index in range(50)]
    assert [(p.position, p.wait_ms) for p in placed if p is not None] == [
        (index + 1, 100 * index) for index in range(50)
    ]
    assert orderings == 1
    for index in range(50, 100):
        pushed = push(f"c{index}")
        assert lane.placement(pushed.request_id) == Placed(pushed, index + 1, 100 * index)
    assert orderings == 1
    lane.remove("c0")
    one = lane.placement("c99")
    assert one is not None and (one.position, one.wait_ms) == (99, 9800)
    assert orderings == 2
