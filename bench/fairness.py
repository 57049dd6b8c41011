"""How Corral's queue ordering shares one backend between callers, by simulation.

    uv run python bench/fairness.py [--seed N] [--json OUT]

A deterministic discrete-event simulation: seeded arrivals, a virtual clock injected into the
real `corral_scheduler.ordering.Ordering`, no sleeping and no network. It drives
`Ordering.choose` exactly as the scheduler's executor does (one job at a time; when one ends,
choose among those waiting; the loaded model is the last job's), and `Ordering.order` exactly
as admission does (the position a job is told when it arrives). Every policy in a scenario sees
the same arrivals and the same job sizes; only the order (and so the model loads) differ.
Method and results: docs/queue.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import percentile

from corral_common.messages import Priority
from corral_common.model_names import same_model
from corral_scheduler.ordering import Ordering, OrderingPolicy

DEFAULT_SEED = 7
PROMPT_TOKENS = (100, 1500)
OUTPUT_TOKENS = (100, 400)
# The scheduler's default per-caller cap (CORRAL_MAX_QUEUED_PER_KEY): more are refused (429).
MAX_QUEUED_PER_KEY = 64
PRIORITY_NAMES: tuple[Priority, ...] = ("interactive", "normal", "batch")
# Offered load of the mixed-models scenario before model loads: with FIFO's swaps on top the
# server is busy about 0.9 of the time.
MIXED_LOAD = 0.7


# -- the workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    load_s: float
    prompt_tokens_per_s: float
    eval_tokens_per_s: float

    def work_s(self, prompt_tokens: float, output_tokens: float) -> float:
        """Prompt processing plus generation, once the model is loaded."""
        return prompt_tokens / self.prompt_tokens_per_s + output_tokens / self.eval_tokens_per_s


# Speeds of the order one 12-16 GB consumer GPU gives for these sizes (Q4), loads from NVMe.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("llama3.2:3b", load_s=2.0, prompt_tokens_per_s=3000, eval_tokens_per_s=110),
        ModelSpec("llama3.1:8b", load_s=3.0, prompt_tokens_per_s=1500, eval_tokens_per_s=55),
        ModelSpec("qwen2.5:14b", load_s=5.0, prompt_tokens_per_s=800, eval_tokens_per_s=32),
    )
}


@dataclass(frozen=True)
class CallerSpec:
    key: str
    # (model, weight): which models this caller's requests name.
    models: tuple[tuple[str, float], ...]
    # Mean gap between Poisson arrivals, up to the scenario's horizon (0: none).
    mean_gap_s: float = 0.0
    # Requests submitted at t=0.
    burst: int = 0
    priority: Priority = "normal"

    def mean_work_s(self) -> float:
        prompt, output = sum(PROMPT_TOKENS) / 2, sum(OUTPUT_TOKENS) / 2
        total = sum(weight for _, weight in self.models)
        return sum(MODELS[m].work_s(prompt, output) * w for m, w in self.models) / total


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    callers: tuple[CallerSpec, ...]
    horizon_s: float

    def offered_load(self) -> float:
        """Poisson work arriving per second of horizon (the bursts come on top)."""
        return sum(c.mean_work_s() / c.mean_gap_s for c in self.callers if c.mean_gap_s > 0)


@dataclass(frozen=True)
class Request:
    request_id: str
    key: str
    priority: Priority
    model: str
    arrival: float
    work_s: float


def at_load(
    callers: Sequence[CallerSpec], rates: Sequence[float], load: float
) -> tuple[CallerSpec, ...]:
    """The callers with arrival rates in the given proportions, scaled to an offered load."""
    unit = sum(rate * caller.mean_work_s() for caller, rate in zip(callers, rates, strict=True))
    return tuple(
        replace(caller, mean_gap_s=unit / (rate * load))
        for caller, rate in zip(callers, rates, strict=True)
    )


SMALL, MEDIUM, LARGE = "llama3.2:3b", "llama3.1:8b", "qwen2.5:14b"

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "flood",
        "A submits 50 requests at t=0; B and C one every 10 s (Poisson) for 300 s; one model",
        (
            CallerSpec("A", ((SMALL, 1),), burst=50),
            CallerSpec("B", ((SMALL, 1),), mean_gap_s=10),
            CallerSpec("C", ((SMALL, 1),), mean_gap_s=10),
        ),
        horizon_s=300,
    ),
    Scenario(
        "mixed-models",
        f"4 callers, rates 4:3:2:1, three models, offered load {MIXED_LOAD} before loads, 1 h",
        at_load(
            (
                CallerSpec("app", ((MEDIUM, 1),)),
                CallerSpec("bot", ((SMALL, 1),)),
                CallerSpec("dev", ((MEDIUM, 1), (SMALL, 1))),
                CallerSpec("eval", ((LARGE, 1),)),
            ),
            rates=(4, 3, 2, 1),
            load=MIXED_LOAD,
        ),
        horizon_s=3600,
    ),
    Scenario(
        "priorities",
        "ide (interactive) and chat (normal) at load 0.8 together, nightly (batch) 20 at t=0 "
        "then one every 80 s (Poisson), 30 min, one model",
        (
            *at_load(
                (
                    CallerSpec("ide", ((MEDIUM, 1),), priority="interactive"),
                    CallerSpec("chat", ((MEDIUM, 1),), priority="normal"),
                ),
                rates=(1, 1),
                load=0.8,
            ),
            CallerSpec("nightly", ((MEDIUM, 1),), mean_gap_s=80, burst=20, priority="batch"),
        ),
        horizon_s=1800,
    ),
)


def generate(scenario: Scenario, seed: int) -> list[Request]:
    """The scenario's arrivals, in arrival order; the same for every policy."""
    rng = random.Random(f"{seed}:{scenario.name}")
    requests: list[Request] = []
    for caller in scenario.callers:
        times = [0.0] * caller.burst + poisson_times(rng, caller.mean_gap_s, scenario.horizon_s)
        for index, arrival in enumerate(times):
            requests.append(make_request(rng, caller, f"{caller.key}-{index}", arrival))
    # Stable: ties (the bursts) keep caller order, then submission order.
    return sorted(requests, key=lambda request: request.arrival)


def poisson_times(rng: random.Random, mean_gap_s: float, horizon_s: float) -> list[float]:
    times: list[float] = []
    if mean_gap_s <= 0:
        return times
    now = rng.expovariate(1 / mean_gap_s)
    while now < horizon_s:
        times.append(now)
        now += rng.expovariate(1 / mean_gap_s)
    return times


def make_request(
    rng: random.Random, caller: CallerSpec, request_id: str, arrival: float
) -> Request:
    names = [name for name, _ in caller.models]
    model = rng.choices(names, weights=[weight for _, weight in caller.models])[0]
    prompt, output = rng.randint(*PROMPT_TOKENS), rng.randint(*OUTPUT_TOKENS)
    return Request(
        request_id,
        caller.key,
        caller.priority,
        model,
        arrival,
        MODELS[model].work_s(prompt, output),
    )


# -- the simulation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyCase:
    name: str
    policy: OrderingPolicy
    # False: every job is "normal" (plain FIFO knows no priorities).
    priorities: bool = True


POLICIES: tuple[PolicyCase, ...] = (
    PolicyCase("fifo", OrderingPolicy(fair_share=False, aging_s=0, group_bound=0), False),
    PolicyCase("fair", OrderingPolicy(fair_share=True, aging_s=0, group_bound=0)),
    PolicyCase("fair+aging30", OrderingPolicy(fair_share=True, aging_s=30, group_bound=0)),
    PolicyCase("fair+group2", OrderingPolicy(fair_share=True, aging_s=0, group_bound=2)),
    PolicyCase("fair+group4", OrderingPolicy(fair_share=True, aging_s=0, group_bound=4)),
    # What the scheduler ships with (settings.py).
    PolicyCase("defaults", OrderingPolicy(fair_share=True, aging_s=30, group_bound=2)),
)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class SimJob:
    """A lane entry as ordering sees it (the `Waiting` protocol)."""

    request_id: str
    key: str
    priority: Priority
    model: str
    admitted_at: float
    arrival: int
    overtaken: int = 0
    # Position told at admission (jobs ahead, the running one included), and what it was then.
    told: int = 0
    dispatches_at_admission: int = 0
    running_at_admission: bool = False
    # Service time of the jobs that overtook this one (grouping).
    overtaken_delay_s: float = 0.0


@dataclass(frozen=True)
class Record:
    """One job as it ran."""

    request_id: str
    key: str
    priority: Priority
    model: str
    arrival: float
    start: float
    finish: float
    load_s: float
    work_s: float
    overtaken: int
    overtaken_delay_s: float
    told: int
    actual_ahead: int

    @property
    def wait_s(self) -> float:
        return self.start - self.arrival

    @property
    def slowdown(self) -> float:
        """Response time over the job's own work (a model load it had to wait for counts as
        delay, since the schedule decided it)."""
        return (self.finish - self.arrival) / self.work_s


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    refused: int = 0
    # Choices that were not the head of the order shown a moment before (grouping jumps).
    jumps: int = 0


class Simulator:
    """One policy over one arrival trace, dispatching as the executor does."""

    def __init__(self, case: PolicyCase) -> None:
        self.case = case
        self.clock = VirtualClock()
        self.ordering = Ordering(case.policy, self.clock)
        # Insertion-ordered, like the lane: ordering expects entries in arrival order.
        self.waiting: dict[str, SimJob] = {}
        self.requests: dict[str, Request] = {}
        self.loaded: str | None = None
        self.busy_until = 0.0
        self.dispatches = 0
        self.run = Run()

    def simulate(self, requests: Sequence[Request]) -> Run:
        pending = list(reversed(requests))
        now = 0.0
        while pending or self.waiting:
            while pending and pending[-1].arrival <= now:
                self.admit(pending.pop())
            # Busy: run the next job; idle: wait for the next arrival.
            now = self.dispatch(now) if self.waiting else pending[-1].arrival
        return self.run

    def admit(self, request: Request) -> None:
        self.clock.now = request.arrival
        queued = sum(1 for job in self.waiting.values() if job.key == request.key)
        if MAX_QUEUED_PER_KEY and queued >= MAX_QUEUED_PER_KEY:
            self.run.refused += 1
            return
        priority: Priority = request.priority if self.case.priorities else "normal"
        job = SimJob(
            request.request_id,
            request.key,
            priority,
            request.model,
            request.arrival,
            arrival=len(self.requests),
        )
        self.waiting[job.request_id] = job
        self.requests[job.request_id] = request
        running = request.arrival < self.busy_until
        ahead = [entry.request_id for entry in self.ordering.order(self.waiting.values())]
        job.told = ahead.index(job.request_id) + running
        job.dispatches_at_admission = self.dispatches
        job.running_at_admission = running

    def dispatch(self, now: float) -> float:
        """Run the chosen job; returns when it ends."""
        self.clock.now = now
        shown = self.ordering.order(self.waiting.values())[0]
        before = {job.request_id: job.overtaken for job in self.waiting.values()}
        chosen = self.waiting.pop(
            self.ordering.choose(self.waiting.values(), self.loaded).request_id
        )
        self.run.jumps += chosen.request_id != shown.request_id
        request = self.requests[chosen.request_id]
        load_s = self.load_s(chosen.model)
        finish = now + load_s + request.work_s
        for job in self.waiting.values():
            if job.overtaken > before[job.request_id]:
                job.overtaken_delay_s += finish - now
        self.run.records.append(record(chosen, request, now, finish, load_s, self.dispatches))
        self.loaded = chosen.model
        self.busy_until = finish
        self.dispatches += 1
        return finish

    def load_s(self, model: str) -> float:
        loaded = self.loaded is not None and same_model(self.loaded, model)
        return 0.0 if loaded else MODELS[model].load_s


def record(
    job: SimJob, request: Request, start: float, finish: float, load_s: float, index: int
) -> Record:
    actual = index - job.dispatches_at_admission + job.running_at_admission
    return Record(
        request_id=job.request_id,
        key=job.key,
        priority=request.priority,
        model=job.model,
        arrival=request.arrival,
        start=start,
        finish=finish,
        load_s=load_s,
        work_s=request.work_s,
        overtaken=job.overtaken,
        overtaken_delay_s=job.overtaken_delay_s,
        told=job.told,
        actual_ahead=actual,
    )


# -- the measures -----------------------------------------------------------------------------


def jain(values: Iterable[float]) -> float:
    """Jain's index: 1 when all equal, 1/n when one value has everything."""
    xs = list(values)
    squares = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * squares) if squares else 1.0


def backlogged_shares(records: Sequence[Record]) -> dict[str, float]:
    """Each caller's server time over its fair share of the time it had work in the system.

    Between consecutive arrivals and finishes, the callers with a job waiting or running are
    backlogged, and an ideal fair server would split that time equally between them. Server
    time (a model load included) goes to the caller whose job runs. 1.0 is exactly its share.
    Jobs are not preemptible: a caller whose one short job arrives behind a long one ends above
    1 and the caller it alternates with below, even under perfect turn-taking.
    """
    events = sorted(
        [(r.arrival, 1, r.key) for r in records] + [(r.finish, -1, r.key) for r in records]
    )
    backlog: dict[str, int] = {}
    fair: dict[str, float] = {}
    for (t0, delta, key), (t1, _, _) in itertools.pairwise(events):
        backlog[key] = backlog.get(key, 0) + delta
        active = [k for k, n in backlog.items() if n > 0]
        for k in active:
            fair[k] = fair.get(k, 0.0) + (t1 - t0) / len(active)
    got: dict[str, float] = {}
    for r in records:
        got[r.key] = got.get(r.key, 0.0) + (r.finish - r.start)
    return {k: got[k] / fair[k] for k in got if fair.get(k)}


@dataclass(frozen=True)
class WaitStats:
    n: int
    p50_s: float
    p95_s: float
    max_s: float
    mean_slowdown: float

    @classmethod
    def of(cls, records: Sequence[Record]) -> WaitStats:
        waits = [r.wait_s for r in records]
        return cls(
            n=len(records),
            p50_s=round(percentile(sorted(waits), 50), 1),
            p95_s=round(percentile(sorted(waits), 95), 1),
            max_s=round(max(waits, default=math.nan), 1),
            mean_slowdown=round(sum(r.slowdown for r in records) / len(records), 2),
        )


@dataclass(frozen=True)
class Result:
    policy: str
    # Jain's index over callers of service while backlogged / fair share (the headline).
    jain_share: float
    # Jain's index over callers' mean slowdown (equal misery scores 1).
    jain_slowdown: float
    # Loads of a model while another was loaded (the executor's corral_model_swaps_total).
    swaps: int
    makespan_s: float
    # Share of the makespan the backend was busy (loads included).
    busy: float
    refused: int
    # Choices that were not the head of the order shown just before (grouping jumps).
    jumps: int
    max_overtaken: int
    # Most server time that overtaking jobs added to one job's wait.
    max_overtaken_delay_s: float
    # Longest wait of a job that was overtaken at least once.
    worst_overtaken_wait_s: float
    # Share of jobs that started with exactly the number of jobs ahead they were first told.
    positions_exact: float
    # Most jobs that ran before one beyond the position it was first told.
    max_position_slip: int
    shares: dict[str, float]
    callers: dict[str, WaitStats]
    priorities: dict[str, WaitStats]


def summarise(case: PolicyCase, run: Run, callers: Sequence[str]) -> Result:
    records = run.records
    shares = backlogged_shares(records)
    waits = {key: WaitStats.of([r for r in records if r.key == key]) for key in callers}
    overtaken = [r for r in records if r.overtaken > 0]
    makespan = max(r.finish for r in records) - min(r.arrival for r in records)
    return Result(
        policy=case.name,
        jain_share=round(jain(shares.values()), 3),
        jain_slowdown=round(jain(stats.mean_slowdown for stats in waits.values()), 3),
        swaps=sum(1 for r in records[1:] if r.load_s > 0),
        makespan_s=round(makespan, 1),
        busy=round(sum(r.finish - r.start for r in records) / makespan, 3),
        refused=run.refused,
        jumps=run.jumps,
        max_overtaken=max((r.overtaken for r in records), default=0),
        max_overtaken_delay_s=round(max(r.overtaken_delay_s for r in records), 1),
        worst_overtaken_wait_s=round(max((r.wait_s for r in overtaken), default=0.0), 1),
        positions_exact=round(sum(r.actual_ahead == r.told for r in records) / len(records), 3),
        max_position_slip=max(r.actual_ahead - r.told for r in records),
        shares={key: round(shares[key], 2) for key in callers if key in shares},
        callers=waits,
        priorities={
            name: WaitStats.of(group)
            for name in PRIORITY_NAMES
            if (group := [r for r in records if r.priority == name])
        },
    )


def run_scenario(scenario: Scenario, seed: int) -> tuple[list[Request], list[Result]]:
    requests = generate(scenario, seed)
    callers = [caller.key for caller in scenario.callers]
    results = []
    for case in POLICIES:
        run = Simulator(case).simulate(requests)
        check(case, run, len(requests))
        results.append(summarise(case, run, callers))
    return requests, results


class InvariantError(RuntimeError):
    """The ordering broke a promise the scheduler relies on."""


def check(case: PolicyCase, run: Run, requests: int) -> None:
    bound = case.policy.group_bound
    if len(run.records) + run.refused != requests:
        raise InvariantError(f"{case.name}: a job was lost")
    if any(r.overtaken > bound for r in run.records):
        raise InvariantError(f"{case.name}: a job was overtaken more than {bound} times")
    if not bound and run.jumps:
        raise InvariantError(f"{case.name}: a choice differed from the order shown")


# -- the report -------------------------------------------------------------------------------

COLUMNS = (
    ("policy", 13),
    ("jain share", 10),
    ("jain slow", 9),
    ("swaps", 5),
    ("busy", 5),
    ("makespan s", 10),
    ("jumps", 5),
    ("ovt", 3),
    ("ovt delay s", 11),
    ("ovt wait s", 10),
    ("pos exact", 9),
    ("slip", 4),
)


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    first, *rest = cells
    return " ".join(
        [f"{first!s:<{widths[0]}}", *(f"{c!s:>{w}}" for c, w in zip(rest, widths[1:], strict=True))]
    )


def headline(results: Sequence[Result]) -> list[str]:
    widths = [width for _, width in COLUMNS]
    lines = [row([name for name, _ in COLUMNS], widths)]
    for r in results:
        cells = (
            r.policy,
            f"{r.jain_share:.3f}",
            f"{r.jain_slowdown:.3f}",
            r.swaps,
            f"{r.busy:.2f}",
            f"{r.makespan_s:.0f}",
            r.jumps,
            r.max_overtaken,
            f"{r.max_overtaken_delay_s:.0f}",
            f"{r.worst_overtaken_wait_s:.0f}",
            f"{r.positions_exact:.2f}",
            r.max_position_slip,
        )
        lines.append(row(cells, widths))
    return lines


def share_table(results: Sequence[Result]) -> list[str]:
    names = list(results[0].shares)
    widths = [13, *(8 for _ in names)]
    lines = ["service while backlogged / fair share", row(["policy", *names], widths)]
    lines += [row([r.policy, *(f"{r.shares[n]:.2f}" for n in names)], widths) for r in results]
    return lines


def wait_table(
    title: str, groups: Sequence[dict[str, WaitStats]], policies: Sequence[str]
) -> list[str]:
    names = list(groups[0])
    widths = [13, *(22 for _ in names)]
    lines = [f"{title}: wait p50/p95/max s (mean slowdown)", row(["policy", *names], widths)]
    for policy, stats in zip(policies, groups, strict=True):
        lines.append(row([policy, *(cell(stats[name]) for name in names)], widths))
    return lines


def cell(stats: WaitStats) -> str:
    return f"{stats.p50_s:.0f}/{stats.p95_s:.0f}/{stats.max_s:.0f} ({stats.mean_slowdown:.1f})"


def report(scenario: Scenario, requests: Sequence[Request], results: Sequence[Result]) -> str:
    counts = ", ".join(
        f"{c.key} {sum(1 for r in requests if r.key == c.key)}" for c in scenario.callers
    )
    policies = [r.policy for r in results]
    lines = [
        f"== {scenario.name}: {scenario.summary}",
        f"{len(requests)} requests ({counts}); "
        f"Poisson offered load {scenario.offered_load():.2f} before model loads",
        *headline(results),
        "",
        *share_table(results),
        "",
        *wait_table("per caller", [r.callers for r in results], policies),
    ]
    refused = [f"{r.policy} {r.refused}" for r in results if r.refused]
    if refused:
        lines.append("refused by the per-caller cap: " + ", ".join(refused))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Queue ordering fairness, by simulation.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out: dict[str, Any] = {"seed": args.seed, "machine": machine(), "scenarios": {}}
    for scenario in SCENARIOS:
        requests, results = run_scenario(scenario, args.seed)
        print(report(scenario, requests, results), end="\n\n")
        out["scenarios"][scenario.name] = {
            "summary": scenario.summary,
            "requests": len(requests),
            "offered_load": round(scenario.offered_load(), 3),
            "policies": {r.policy: asdict(r) for r in results},
        }
    elapsed = time.perf_counter() - started
    out["elapsed_s"] = round(elapsed, 2)
    info = machine()
    print(f"seed {args.seed}; {elapsed:.1f} s; nproc {info['nproc']}, Python {info['python']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
