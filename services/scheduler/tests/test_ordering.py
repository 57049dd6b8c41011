"""The ordering policy: priority with aging, fair share between callers, bounded grouping."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral_common.messages import Priority
from corral_scheduler.ordering import Ordering, OrderingPolicy

ARRIVALS = itertools.count()


@dataclass(eq=False)
class Job:
    request_id: str
    key: str = ""
    priority: Priority = "normal"
    model: str = "llama3.2"
    admitted_at: float = 0.0
    overtaken: int = 0
    arrival: int = field(default_factory=lambda: next(ARRIVALS))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ids(jobs: Sequence[Any]) -> list[str]:
    return [job.request_id for job in jobs]


def drain(ordering: Ordering, jobs: list[Job], loaded: str | None = None) -> list[str]:
    """Run everything, one at a time, as the executor would."""
    waiting, ran = list(jobs), []
    while waiting:
        chosen = ordering.choose(waiting, loaded)
        waiting = [job for job in waiting if job is not chosen]
        ran.append(chosen.request_id)
        loaded = chosen.model
    return ran


def test_one_caller_is_plain_fifo() -> None:
    ordering = Ordering(OrderingPolicy(), Clock())
    jobs = [Job(f"j{i}") for i in range(5)]
    assert ids(ordering.order(jobs)) == ["j0", "j1", "j2", "j3", "j4"]
    assert drain(ordering, jobs) == ["j0", "j1", "j2", "j3", "j4"]


def test_a_flooding_caller_does_not_starve_another() -> None:
    ordering = Ordering(OrderingPolicy(), Clock())
    flood = [Job(f"f{i}", key="flood") for i in range(50)]
    late = Job("late", key="polite")
    ran = drain(ordering, [*flood, late])
    # The polite caller's one request runs second, not fifty-first.
    assert ran.index("late") == 1
    assert ran == ["f0", "late", *[f"f{i}" for i in range(1, 50)]]


def test_callers_take_turns_and_the_order_shown_is_the_order_run() -> None:
    ordering = Ordering(OrderingPolicy(), Clock())
    jobs = [Job("a1", "a"), Job("a2", "a"), Job("a3", "a"), Job("b1", "b"), Job("b2", "b")]
    shown = ids(ordering.order(jobs))
    assert shown == ["a1", "b1", "a2", "b2", "a3"]
    assert drain(ordering, jobs) == shown


def test_fair_share_off_is_arrival_order() -> None:
    ordering = Ordering(OrderingPolicy(fair_share=False), Clock())
    jobs = [Job("a1", "a"), Job("a2", "a"), Job("b1", "b")]
    assert drain(ordering, jobs) == ["a1", "a2", "b1"]


def test_priorities_and_aging() -> None:
    clock = Clock()
    ordering = Ordering(OrderingPolicy(aging_s=10), clock)
    batch = Job("batch", priority="batch", admitted_at=0)
    normal = Job("normal", priority="normal", admitted_at=5)
    urgent = Job("urgent", priority="interactive", admitted_at=5)
    clock.now = 5
    assert ids(ordering.order([batch, normal, urgent])) == ["urgent", "normal", "batch"]
    # After 10 s the batch job counts as normal, and it is the older of the two.
    clock.now = 10
    assert ids(ordering.order([batch, normal, urgent])) == ["urgent", "batch", "normal"]


def test_old_normal_work_does_not_outrank_a_newcomer() -> None:
    clock = Clock()
    ordering = Ordering(OrderingPolicy(aging_s=10), clock)
    flood = [Job(f"f{i}", key="flood", admitted_at=0) for i in range(3)]
    clock.now = 100
    fresh = Job("fresh", key="polite", admitted_at=100)
    ordering.served(flood[0])
    assert ids(ordering.order([*flood[1:], fresh]))[0] == "fresh"


def test_grouping_saves_swaps_within_its_bound() -> None:
    ordering = Ordering(OrderingPolicy(fair_share=False, group_bound=2), Clock())
    jobs = [
        Job("q1", model="qwen"),
        Job("l1", model="llama"),
        Job("l2", model="llama"),
        Job("l3", model="llama"),
    ]
    # llama is loaded: two llama jobs may pass q1, then q1's bound is reached.
    assert drain(ordering, jobs, loaded="llama") == ["l1", "l2", "q1", "l3"]


def test_no_grouping_means_strict_order() -> None:
    ordering = Ordering(OrderingPolicy(fair_share=False, group_bound=0), Clock())
    jobs = [Job("q1", model="qwen"), Job("l1", model="llama")]
    assert drain(ordering, jobs, loaded="llama") == ["q1", "l1"]


def scanned(ordering: Ordering, jobs: Sequence[Job]) -> list[str]:
    """The merge of the callers' queues as the rule says it, one scan of every caller per job:
    the most urgent head, then the caller least recently served, then the oldest head, then the
    caller seen first."""
    now = ordering._clock()
    queues: dict[str, list[Job]] = {}
    for job in jobs:
        queues.setdefault(job.key if ordering.policy.fair_share else "", []).append(job)
    for queue in queues.values():
        queue.sort(key=lambda j: (ordering.effective_class(j, now), j.arrival))
    turn = {key: ordering._last_served.get(key, -1) for key in queues}
    step = ordering._served
    ordered: list[str] = []
    while queues:
        key = min(
            queues,
            key=lambda k: (
                ordering.effective_class(queues[k][0], now),
                turn[k],
                queues[k][0].arrival,
            ),
        )
        ordered.append(queues[key].pop(0).request_id)
        step += 1
        turn[key] = step
        if not queues[key]:
            del queues[key]
    return ordered


def test_the_callers_queues_merge_as_a_scan_of_every_caller_would() -> None:
    rng = random.Random(7)
    for _ in range(300):
        clock = Clock()
        clock.now = 100.0
        ordering = Ordering(
            OrderingPolicy(fair_share=rng.random() < 0.8, aging_s=rng.choice([0, 30])), clock
        )
        for served in rng.sample(["a", "b", "c", "d", "e"], rng.randint(0, 5)):
            ordering.served(Job("s", key=served))
        jobs = [
            Job(
                f"j{index}",
                key=rng.choice(["a", "b", "c", "d", "e", ""]),
                priority=rng.choice(["interactive", "normal", "batch"]),
                admitted_at=rng.choice([0.0, 90.0]),
                # Ties included: arrival numbers are not always distinct in a test's lane.
                arrival=rng.randint(0, 20),
            )
            for index in range(rng.randint(0, 30))
        ]
        assert ids(ordering.order(jobs)) == scanned(ordering, jobs)
