"""How close the wait estimates in Corral's queue chunks come to the waits clients really get.

    uv run python bench/estimates.py [--waves 16,12,8,8,4] [--token-delay-ms 20]
        [--prompt-ms-per-token 1] [--load-ms 500] [--keep-alive-s 0.2] [--second-share 0.25]
        [--spread-ms 1000] [--system-words LOW,HIGH] [--servers 1] [--seed 7]
        [--amqp-url URL] [--json OUT]

Starts everything it needs (see bench/harness.py), then sends waves of concurrent streaming
/api/chat requests with mixed `num_predict` caps, prompt lengths and two models; each wave
starts when the previous one has finished. The emulator echoes the user message, so a reply
is as long as its prompt unless capped; `--system-words` puts a system message of random
length ahead of it, which the prompt counts and the reply does not follow. For every request
that had to wait it records the first `queue_info` the client was shown (position,
`estimated_wait_ms`) and how long it then really took until its first token, and until the
backend started the job (the emulator's own stamps: the done line's `created_at` minus
`total_duration`, on the same clock). The first wave runs on the scheduler's priors (and, for
the clients that arrive once the first job streams, on what it shows) and is reported apart
from the later ones, which run on speeds learned from the backend's own timings.

The headline is the median of |first estimate - real wait| / real wait over the clients shown
a wait (to the first token), for every wave, the first and the later ones.

To say why the estimates are off, it replays every job's price with the scheduler's own
`SpeedBook` (checked against the estimates clients were shown) and sets it against what the
backend spent, part by part; a load is charged where the model changes along the order the
jobs ran in (as the scheduler charges one per swap along the queue), and set against the loads
the backend reported. At the end it reads the scheduler's `corral_wait_estimate_*` histograms
(the bias one's signed sum from its own gauge). Method and results: docs/performance.md.

With `--servers N` (N > 1) the scheduler drives a pool of N emulators, each kept serial (every
emulator's own count is checked), and the same waves measure whether a client is still told the
wait it will really get when jobs run N at a time. The replay ("why") is left out there: it
plays the jobs' prices along one server's run order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import harness
import orjson
from prometheus_client.parser import text_string_to_metric_families

from corral_emulator import EmulatorControl, expected_reply
from corral_emulator.testing import METRICS
from corral_scheduler.eta import REAL_LOAD_MS, SimServer, SpeedBook, pool_waits
from corral_scheduler.settings import SchedulerSettings

MODELS = ("llama3.2", "qwen2.5:0.5b")
# Output caps; None sends no `num_predict`, so the scheduler has to guess the reply's length.
NUM_PREDICT: tuple[int | None, ...] = (20, 30, 50, 80, 120, 200, None)
# Words in the user message. The emulator echoes it ("Echo:" + one token per word), so a cap
# above the message's length is not reached: like a real model stopping early.
PROMPT_WORDS = (20, 240)
VOCABULARY = (
    *("a", "queue", "of", "requests", "waits", "for", "the", "model", "to", "answer"),
    *("each", "scheduler", "estimates", "latency", "in", "tokens", "and", "seconds"),
)
BUCKETS: tuple[tuple[str, int, int], ...] = (("1", 1, 1), ("2-4", 2, 4), ("5+", 5, 1 << 30))
TARGETS = ("first_token", "start")
HISTOGRAMS = ("corral_wait_estimate_error_seconds", "corral_wait_estimate_bias_seconds")
# prometheus_client exports no `_sum` for a histogram with negative buckets (the bias one): the
# scheduler keeps the signed sum in this gauge.
BIAS_SUM_GAUGE = "corral_wait_estimate_bias_sum_seconds"


# -- the requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    wave: int
    index: int
    model: str
    num_predict: int | None
    prompt: str
    # When it is sent, after its wave starts.
    delay_s: float
    # A system message ahead of the user's ("": none). The emulator echoes only the user's, so
    # it makes the prompt longer without making the reply so.
    system: str = ""

    def body(self) -> bytes:
        messages = [{"role": "user", "content": self.prompt}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
        }
        if self.num_predict is not None:
            body["options"] = {"num_predict": self.num_predict}
        return orjson.dumps(body)

    @property
    def expected(self) -> str:
        return expected_reply(self.prompt, self.num_predict)


def make_prompt(rng: random.Random, index: int) -> str:
    words = rng.randint(*PROMPT_WORDS)
    return " ".join([f"q{index}", *rng.choices(VOCABULARY, k=words - 1)])


def plan_waves(
    sizes: Sequence[int],
    rng: random.Random,
    second_share: float,
    spread_s: float,
    system_words: tuple[int, int] = (0, 0),
) -> list[list[Job]]:
    """Every wave's jobs in the order they are sent; the first of each goes at once. With
    `system_words` above 0, each has a system message of that many words (drawn after
    everything else, so the rest of a seed's workload stays the same)."""
    counter = itertools.count()
    waves: list[list[Job]] = []
    for wave, size in enumerate(sizes, start=1):
        delays = sorted([0.0, *(rng.uniform(0, spread_s) for _ in range(size - 1))])
        jobs = []
        for delay in delays:
            index = next(counter)
            model = MODELS[1] if rng.random() < second_share else MODELS[0]
            jobs.append(
                Job(wave, index, model, rng.choice(NUM_PREDICT), make_prompt(rng, index), delay)
            )
        waves.append(jobs)
    if max(system_words) > 0:
        waves = [
            [
                replace(job, system=" ".join(rng.choices(VOCABULARY, k=rng.randint(*system_words))))
                for job in jobs
            ]
            for jobs in waves
        ]
    return waves


@dataclass(frozen=True)
class Observation:
    """One request. Clock readings are epoch ns of this machine's clock, which the emulator
    also stamps its chunks with."""

    wave: int
    index: int
    model: str
    num_predict: int | None
    prompt_chars: int
    # The first queue chunk with a position: None when the request never waited.
    position: int | None
    estimate_ms: int | None
    sent_ns: int
    shown_ns: int | None
    first_token_ns: int
    backend_start_ns: int
    backend_done_ns: int
    # The backend's own timing fields from the done line, and its `done_reason` ("length":
    # cut at `num_predict`).
    final: dict[str, Any]
    # Every queue chunk with a position above 0: (epoch ns, position, estimated_wait_ms).
    queue_chunks: list[tuple[int, int, int]] = field(default_factory=list)

    def actual_ms(self, target: str) -> float | None:
        """The real wait from the first queue chunk to the first token, or to the backend
        starting the job (what the estimate is of: it leaves out the job's own load and
        prompt)."""
        if self.shown_ns is None:
            return None
        end = self.first_token_ns if target == "first_token" else self.backend_start_ns
        return (end - self.shown_ns) / 1e6

    def spent_ms(self, field_name: str) -> float:
        return int(self.final.get(field_name) or 0) / 1e6


@dataclass
class Reading:
    """What one stream has shown so far (epoch ns)."""

    shown: tuple[int, int, int] | None = None
    queue: list[tuple[int, int, int]] = field(default_factory=list)
    first_token: int | None = None
    text: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None

    def take(self, chunk: dict[str, Any], now: int) -> None:
        if "error" in chunk:
            raise harness.BenchError(f"error line in stream: {chunk['error']}")
        if chunk.get("done"):
            self.final = chunk
            return
        queue = chunk.get("queue_info")
        if queue is not None and int(queue["position"]) > 0:
            self.queue.append((now, int(queue["position"]), int(queue["estimated_wait_ms"])))
            if self.shown is None:
                self.shown = self.queue[-1]
        content = (chunk.get("message") or {}).get("content") or ""
        if content and self.first_token is None:
            self.first_token = now
        self.text.append(content)


async def run_job(session: aiohttp.ClientSession, url: str, job: Job) -> Observation:
    await asyncio.sleep(job.delay_s)
    reading = Reading()
    sent_ns = time.time_ns()
    async with session.post(url, data=job.body()) as response:
        if response.status != 200:
            detail = (await response.text())[:300]
            raise harness.BenchError(f"request {job.index}: HTTP {response.status}: {detail}")
        async for line in response.content:
            reading.take(orjson.loads(line), time.time_ns())
    if reading.final is None or reading.first_token is None:
        raise harness.BenchError(f"request {job.index}: the stream ended early")
    if "".join(reading.text) != job.expected:
        raise harness.BenchError(f"request {job.index}: not the emulator's expected reply")
    return observe(job, reading, sent_ns, reading.final, reading.first_token)


def observe(
    job: Job, reading: Reading, sent_ns: int, final: dict[str, Any], first_token_ns: int
) -> Observation:
    shown_ns, position, estimate = reading.shown or (None, None, None)
    done_ns = harness.epoch_ns(str(final["created_at"]))
    return Observation(
        wave=job.wave,
        index=job.index,
        model=job.model,
        num_predict=job.num_predict,
        # As the gateway counts it: every message's content.
        prompt_chars=len(job.prompt) + len(job.system),
        position=position,
        estimate_ms=estimate,
        sent_ns=sent_ns,
        shown_ns=shown_ns,
        first_token_ns=first_token_ns,
        # `total_duration` runs from the handler's start to just before the final chunk.
        backend_start_ns=done_ns - int(final["total_duration"]),
        backend_done_ns=done_ns,
        final={name: final[name] for name in (*METRICS, "done_reason") if name in final},
        queue_chunks=list(reading.queue),
    )


async def run_waves(
    session: aiohttp.ClientSession, url: str, waves: list[list[Job]]
) -> list[Observation]:
    observations: list[Observation] = []
    for jobs in waves:
        started = time.perf_counter()
        done = await asyncio.gather(*(run_job(session, url, job) for job in jobs))
        waited = sum(1 for o in done if o.position is not None)
        harness.log(
            f"wave {jobs[0].wave}: {len(jobs)} requests ({waited} shown a wait) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        observations.extend(done)
    return observations


# -- statistics -------------------------------------------------------------------------------


def p(values: Sequence[float], q: float) -> float:
    return harness.percentile(sorted(values), q)


@dataclass(frozen=True)
class ErrorStats:
    """Error = estimate - actual: positive when the client was told too long a wait."""

    n: int
    actual_p50_ms: float
    estimate_p50_ms: float
    abs_p50_ms: float
    abs_p90_ms: float
    bias_p50_ms: float
    # |error| / actual wait.
    relative_p50: float

    @classmethod
    def of(cls, pairs: Sequence[tuple[float, float]]) -> ErrorStats:
        """From (estimate, actual) pairs."""
        errors = [e - a for e, a in pairs]
        absolute = [abs(x) for x in errors]
        return cls(
            n=len(pairs),
            actual_p50_ms=p([a for _, a in pairs], 50),
            estimate_p50_ms=p([e for e, _ in pairs], 50),
            abs_p50_ms=p(absolute, 50),
            abs_p90_ms=p(absolute, 90),
            bias_p50_ms=p(errors, 50),
            relative_p50=p([x / a for x, (_, a) in zip(absolute, pairs, strict=True)], 50),
        )


def error_pairs(observations: Sequence[Observation], target: str) -> list[tuple[float, float]]:
    pairs = []
    for o in observations:
        actual = o.actual_ms(target)
        if o.estimate_ms is not None and actual is not None and actual > 0:
            pairs.append((float(o.estimate_ms), actual))
    return pairs


def phase_of(o: Observation) -> str:
    return "wave 1 (priors)" if o.wave == 1 else "later waves (learned)"


def bucket_of(o: Observation) -> str:
    for name, low, high in BUCKETS:
        if o.position is not None and low <= o.position <= high:
            return name
    return "none"


def grouped(
    observations: Sequence[Observation], target: str, *keys: Callable[[Observation], str]
) -> dict[str, ErrorStats]:
    """Stats per combination of key values (joined by " / "), plus one "all" per first key."""
    groups: dict[str, list[Observation]] = {}
    for o in observations:
        if o.position is None:
            continue
        labels = [key(o) for key in keys]
        groups.setdefault(" / ".join(labels), []).append(o)
        if len(keys) > 1:
            groups.setdefault(" / ".join([labels[0], "all"]), []).append(o)
    return {
        name: ErrorStats.of(pairs)
        for name, members in sorted(groups.items(), reverse=True)
        if (pairs := error_pairs(members, target))
    }


# -- why: every job's price, replayed ---------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """What the scheduler charged for one job at its admission, by part (ms)."""

    load_ms: float
    prompt_ms: float
    generation_ms: float
    # What a load of its model costs, charged or not.
    model_load_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.prompt_ms + self.generation_ms


def run_order(observations: Sequence[Observation]) -> list[Observation]:
    return sorted(observations, key=lambda o: o.backend_start_ns)


def swaps(observations: Sequence[Observation]) -> set[int]:
    """The jobs charged a load: those whose model differs from the job that ran before them
    (the first job: no model known to be loaded), as the scheduler charges one per swap along
    the queue."""
    charged: set[int] = set()
    before: str | None = None
    for o in run_order(observations):
        if before is None or before.lower() != o.model.lower():
            charged.add(o.index)
        before = o.model
    return charged


def replay_prices(observations: Sequence[Observation]) -> dict[int, Price]:
    """Each job's price as the scheduler worked it out: its own SpeedBook with its default
    priors, fed every job that finished before this one was sent, in the order they finished
    (what the running job shows as it streams is left out); the load is charged where the job
    swaps the model along the order the jobs ran in (`swaps`)."""
    book = SpeedBook.from_settings(SchedulerSettings())
    charged = swaps(observations)
    finished = iter(sorted(observations, key=lambda o: o.backend_done_ns))
    pending = next(finished, None)
    prices: dict[int, Price] = {}
    for o in sorted(observations, key=lambda o: o.sent_ns):
        while pending is not None and pending.backend_done_ns < o.sent_ns:
            book.observe(pending.model, pending.final, pending.prompt_chars)
            pending = next(finished, None)
        prices[o.index] = price_of(book, o, o.index in charged)
    return prices


def price_of(book: SpeedBook, o: Observation, swap: bool) -> Price:
    work = book.estimate_ms(o.model, o.prompt_chars, o.num_predict, o.model)
    prompt = book.prompt_ms(o.model, o.prompt_chars)
    load = book.load_ms(o.model)
    return Price(
        load_ms=load if swap else 0.0,
        prompt_ms=prompt,
        generation_ms=work - prompt,
        model_load_ms=load,
    )


def replayed_wait_ms(
    o: Observation, everyone: Sequence[Observation], prices: dict[int, Price]
) -> float:
    """The wait the scheduler would have announced to `o` from the replayed prices: what is
    left of the running job's price (by the clock) plus the work of every job admitted before
    `o` that had not started yet, in the order they ran, a load charged once per swap along
    it (eta.pool_waits, one server)."""
    admitted = o.sent_ns
    running = 0.0
    loaded: str | None = None
    ahead: list[Observation] = []
    for other in run_order(everyone):
        if other.index == o.index or other.sent_ns >= admitted:
            continue
        if other.backend_start_ns <= admitted < other.backend_done_ns:
            elapsed = (admitted - other.backend_start_ns) / 1e6
            running = max(0.0, prices[other.index].total_ms - elapsed)
            loaded = other.model
        elif other.backend_start_ns > admitted:
            ahead.append(other)
        elif other.backend_done_ns <= admitted:
            loaded = other.model
    jobs = [
        (
            round(prices[a.index].prompt_ms + prices[a.index].generation_ms),
            round(prices[a.index].model_load_ms),
            a.model,
        )
        for a in ahead
    ]
    server = SimServer("backend", round(running), loaded)
    waits = pool_waits([server], [*jobs, (0, 0, o.model)], lambda _s, _i: True)
    return float(waits[-1])


def reply_kind(o: Observation) -> str:
    if o.num_predict is None:
        return "no num_predict"
    if int(o.final.get("eval_count") or 0) >= o.num_predict:
        return "num_predict reached"
    return "stopped before num_predict"


@dataclass(frozen=True)
class PartRow:
    """One part of the jobs' cost: what the scheduler charged against what the backend spent."""

    n: int
    charged_s: float
    spent_s: float
    # Per job, charged - spent.
    over_p50_ms: float

    @classmethod
    def of(cls, charged: Sequence[float], spent: Sequence[float]) -> PartRow:
        over = [c - s for c, s in zip(charged, spent, strict=True)]
        return cls(len(charged), sum(charged) / 1e3, sum(spent) / 1e3, p(over, 50))


# (row, Price attribute, the backend's duration field)
PARTS = (
    ("load", "load_ms", "load_duration"),
    ("prompt", "prompt_ms", "prompt_eval_duration"),
    ("generation", "generation_ms", "eval_duration"),
    ("whole job (`total_duration`)", "total_ms", "total_duration"),
)


def part_rows(jobs: Sequence[Observation], prices: dict[int, Price]) -> dict[str, PartRow]:
    """Charged against spent, by part, over the given jobs; generation also by reply kind."""

    def row(members: Sequence[Observation], charged: str, spent: str) -> PartRow:
        return PartRow.of(
            [getattr(prices[o.index], charged) for o in members],
            [o.spent_ms(spent) for o in members],
        )

    rows: dict[str, PartRow] = {}
    for name, charged, spent in PARTS:
        rows[name] = row(jobs, charged, spent)
        if name != "generation":
            continue
        for kind in sorted({reply_kind(o) for o in jobs}):
            rows[f"  generation, {kind}"] = row(
                [o for o in jobs if reply_kind(o) == kind], charged, spent
            )
    return rows


def gaps_ms(observations: Sequence[Observation]) -> list[float]:
    """Backend idle time between one job's end and the next one's start, within a wave."""
    ordered = sorted(observations, key=lambda o: o.backend_start_ns)
    return [
        (after.backend_start_ns - before.backend_done_ns) / 1e6
        for before, after in itertools.pairwise(ordered)
        if before.wave == after.wave
    ]


@dataclass(frozen=True)
class Why:
    # |replayed - shown| over the later waves' requests shown a wait: how well the replay
    # reproduces them.
    replay_gap_p50_ms: float
    replay_gap_p90_ms: float
    # Later waves' jobs.
    parts: dict[str, PartRow]
    # Later waves: jobs charged a load (a swap along the run order), and jobs whose backend
    # reported one.
    loads_charged: int
    loads_happened: int
    # Of those, the ones both charged and loaded.
    loads_matched: int
    gap_p50_ms: float
    jobs_overtaken: int
    countdown: Countdown


def explain(observations: Sequence[Observation]) -> Why:
    prices = replay_prices(observations)
    charged = swaps(observations)
    shown = [o for o in observations if o.estimate_ms is not None]
    # Later waves only: the first runs on what the running job shows as it streams, which
    # the replay leaves out.
    replay_gap = [
        abs(replayed_wait_ms(o, observations, prices) - float(o.estimate_ms or 0))
        for o in shown
        if o.wave > 1
    ]
    later = [o for o in observations if o.wave > 1]
    return Why(
        replay_gap_p50_ms=p(replay_gap, 50),
        replay_gap_p90_ms=p(replay_gap, 90),
        parts=part_rows(later, prices),
        loads_charged=sum(1 for o in later if o.index in charged),
        loads_happened=sum(1 for o in later if loaded(o)),
        loads_matched=sum(1 for o in later if o.index in charged and loaded(o)),
        gap_p50_ms=p(gaps_ms(later), 50),
        jobs_overtaken=overtaken(later),
        countdown=countdown(observations),
    )


def loaded(o: Observation) -> bool:
    return o.spent_ms("load_duration") >= REAL_LOAD_MS


# A repeated queue chunk whose estimate fell by the time since the one before, within this,
# was counted down with the clock (the gateway's heartbeat); the client's clock reading adds
# the delivery's jitter.
CLOCK_SLACK_MS = 100.0


@dataclass(frozen=True)
class Countdown:
    """Consecutive queue chunks of one client at the same position. Between the scheduler's
    updates the gateway repeats the last one as a heartbeat, counted down by the time since."""

    chunks: int
    repeats: int
    # Of the repeats: fell by the time between them (a heartbeat counting down), showed the
    # same number again, or changed otherwise (the scheduler re-estimating).
    with_clock: int
    same: int
    re_estimated: int


def countdown(observations: Sequence[Observation]) -> Countdown:
    with_clock = same = other = chunks = 0
    for o in observations:
        chunks += len(o.queue_chunks)
        for (t1, pos1, est1), (t2, pos2, est2) in itertools.pairwise(o.queue_chunks):
            if pos1 != pos2:
                continue
            elapsed_ms = (t2 - t1) / 1e6
            if est2 == est1:
                same += 1
            elif abs((est1 - est2) - elapsed_ms) <= CLOCK_SLACK_MS or (
                est2 == 0 and est1 <= elapsed_ms + CLOCK_SLACK_MS
            ):
                with_clock += 1
            else:
                other += 1
    return Countdown(chunks, with_clock + same + other, with_clock, same, other)


def overtaken(observations: Sequence[Observation]) -> int:
    """Jobs that started after a job sent later than them (the scheduler's grouping of jobs
    for the loaded model; the estimate assumes arrival order)."""
    count = 0
    for o in observations:
        if any(
            other.sent_ns > o.sent_ns and other.backend_start_ns < o.backend_start_ns
            for other in observations
        ):
            count += 1
    return count


# -- the scheduler's own view -----------------------------------------------------------------


@dataclass(frozen=True)
class HistogramSummary:
    """A Prometheus histogram in seconds. prometheus_client leaves `_sum` out of a histogram
    with negative buckets (the bias one), so `total` may be None."""

    count: float
    total: float | None
    # Prometheus's histogram_quantile(0.5): linear within the bucket holding the median.
    p50: float
    # Share of observations above 0 (for the bias: clients told too long a wait).
    above_zero: float


def summarise_histogram(
    buckets: list[tuple[float, float]], total: float | None
) -> HistogramSummary:
    """From cumulative (upper bound, count) buckets in order, +Inf last."""
    count = buckets[-1][1] if buckets else 0.0
    at_zero = max((c for bound, c in buckets if bound <= 0), default=0.0)
    return HistogramSummary(
        count=count,
        total=total,
        p50=bucket_quantile(buckets, 0.5),
        above_zero=(count - at_zero) / count if count else math.nan,
    )


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = (0.0 if buckets[0][0] > 0 else -math.inf), 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound) or math.isinf(lower_bound):
                return lower_bound if math.isinf(bound) else bound
            share = (rank - lower_count) / (cumulative - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return math.nan


async def scrape_histograms(
    session: aiohttp.ClientSession, scheduler_url: str
) -> dict[str, HistogramSummary]:
    """The scheduler's estimate histograms from its /metrics."""
    async with session.get(f"{scheduler_url}/metrics") as response:
        text = await response.text()
    found: dict[str, HistogramSummary] = {}
    families = list(text_string_to_metric_families(text))
    bias_sum = next(
        (f.samples[0].value for f in families if f.name == BIAS_SUM_GAUGE and f.samples), None
    )
    for family in families:
        if family.name not in HISTOGRAMS:
            continue
        buckets: list[tuple[float, float]] = []
        total = None
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
        if total is None and family.name == "corral_wait_estimate_bias_seconds":
            total = bias_sum
        found[family.name] = summarise_histogram(buckets, total)
    return found


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """The median of |first estimate - real wait to the first token| / real wait."""

    n: int
    relative_p50: float
    # The share of clients whose first estimate was within 15 % of their wait.
    within_15: float


def headline(observations: Sequence[Observation]) -> dict[str, Headline]:
    groups = {
        "every wave": list(observations),
        "wave 1 (priors)": [o for o in observations if o.wave == 1],
        "later waves (learned)": [o for o in observations if o.wave > 1],
    }
    found = {}
    for name, members in groups.items():
        pairs = error_pairs(members, "first_token")
        if not pairs:
            continue
        relative = [abs(e - a) / a for e, a in pairs]
        found[name] = Headline(
            n=len(pairs),
            relative_p50=p(relative, 50),
            within_15=sum(1 for r in relative if r <= 0.15) / len(relative),
        )
    return found


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    headline: dict[str, Headline]
    # target -> group -> stats
    by_position: dict[str, dict[str, ErrorStats]]
    by_wave: dict[str, ErrorStats]
    by_model: dict[str, ErrorStats]
    # None with a pool (the replay follows one server's run order).
    why: Why | None
    scheduler_histograms: dict[str, HistogramSummary]
    emulator_stats: dict[str, Any]
    observations: list[Observation] = field(repr=False)


async def run_benchmark(args: argparse.Namespace, stack: harness.Stack) -> Report:
    waves = plan_waves(
        args.waves, random.Random(args.seed), args.second_share, args.spread_s, args.system_words
    )
    url = f"{stack.gateway_url}/api/chat"
    servers = dict(stack.pool) or {"emulator": stack.emulator_url}
    async with contextlib.AsyncExitStack() as held, aiohttp.ClientSession() as session:
        controls = {
            name: await held.enter_async_context(EmulatorControl(server_url))
            for name, server_url in servers.items()
        }
        for control in controls.values():
            await control.reset()
            await control.configure(default_keep_alive_s=args.keep_alive_s)
        observations = await run_waves(session, url, waves)
        # Let the scheduler finish its bookkeeping for the last job.
        await asyncio.sleep(0.3)
        histograms = await scrape_histograms(session, stack.scheduler_url)
        by_server = {name: await control.stats() for name, control in controls.items()}
    stats = pooled_stats(by_server, sum(args.waves))
    later = [o for o in observations if o.wave > 1]
    return Report(
        config=config_of(args),
        environment=await harness.environment(stack.amqp_url),
        headline=headline(observations),
        by_position={t: grouped(observations, t, phase_of, bucket_of) for t in TARGETS},
        by_wave=grouped(observations, "first_token", lambda o: f"wave {o.wave}"),
        by_model=grouped(later, "first_token", lambda o: o.model),
        why=explain(observations) if len(servers) == 1 else None,
        scheduler_histograms=histograms,
        emulator_stats=stats,
        observations=observations,
    )


def pooled_stats(by_server: dict[str, dict[str, Any]], sent: int) -> dict[str, Any]:
    """Every server's record checked (each ran one generation at a time, together they ran
    every request sent) and summed; one server's record as it is."""
    if len(by_server) == 1:
        [stats] = by_server.values()
        harness.check_backend_record(stats, sent)
        return stats
    for name, stats in by_server.items():
        if int(stats.get("max_active") or 0) > 1:
            raise harness.BenchError(f"server {name} ran {stats['max_active']} at once")
    completed = sum(int(stats.get("completed") or 0) for stats in by_server.values())
    if completed != sent:
        raise harness.BenchError(f"the servers completed {completed} generations of {sent}")
    return {
        "completed": completed,
        "loads": sum(int(stats.get("loads") or 0) for stats in by_server.values()),
        "by_server": {name: stats.get("completed") for name, stats in by_server.items()},
    }


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "servers": args.servers,
        "waves": args.waves,
        "token_delay_ms": args.token_delay_ms,
        "prompt_ms_per_token": args.prompt_ms_per_token,
        "load_ms": args.load_ms,
        "keep_alive_s": args.keep_alive_s,
        "second_share": args.second_share,
        "spread_ms": args.spread_s * 1e3,
        "seed": args.seed,
        "models": list(MODELS),
        "num_predict": list(NUM_PREDICT),
        "prompt_words": list(PROMPT_WORDS),
        "system_words": list(args.system_words),
        "broker": "external" if args.amqp_url else "throwaway node",
    }


# -- output -----------------------------------------------------------------------------------

HEADER = (
    "| {label} | n | actual p50 | estimate p50 | abs error p50 | abs error p90 "
    "| bias p50 | abs error / actual p50 |"
)


def stats_table(label: str, rows: dict[str, ErrorStats]) -> list[str]:
    lines = [HEADER.format(label=label), "| --- " + "| ---: " * 7 + "|"]
    for name, s in rows.items():
        cells = [
            s.actual_p50_ms,
            s.estimate_p50_ms,
            s.abs_p50_ms,
            s.abs_p90_ms,
        ]
        text = [f"{v / 1e3:.2f}" for v in cells]
        lines.append(
            f"| {name} | {s.n} | " + " | ".join(text) + f" | {s.bias_p50_ms / 1e3:+.2f} "
            f"| {s.relative_p50:.0%} |"
        )
    return lines


def histogram_lines(histograms: dict[str, HistogramSummary]) -> list[str]:
    lines = [
        f"(The bias histogram's sum is read from `{BIAS_SUM_GAUGE}`: no `_sum` is exported for "
        "a histogram with negative buckets.)",
        "",
        "| scheduler histogram | count | sum (s) | mean (s) | p50 from buckets (s) | share > 0 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, h in histograms.items():
        total = "not exported" if h.total is None else f"{h.total:+.2f}"
        mean = "-" if h.total is None or not h.count else f"{h.total / h.count:+.2f}"
        lines.append(
            f"| `{name}` | {h.count:.0f} | {total} | {mean} | {h.p50:+.2f} | {h.above_zero:.0%} |"
        )
    return lines


def why_lines(why: Why) -> list[str]:
    lines = [
        "| part | jobs | charged (s) | spent (s) | charged - spent per job, p50 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in why.parts.items():
        lines.append(
            f"| {name} | {row.n} | {row.charged_s:.1f} | {row.spent_s:.1f} "
            f"| {row.over_p50_ms:+.0f} |"
        )
    return [
        *lines,
        "",
        f"Loads charged (a swap along the run order) {why.loads_charged}, loads that happened "
        f"{why.loads_happened}, both {why.loads_matched}. "
        f"Backend idle between jobs (not priced): p50 {why.gap_p50_ms:.1f} ms. "
        f"Jobs overtaken by a later one (grouping for the loaded model): {why.jobs_overtaken}. "
        "The replay reproduces the later waves' shown estimates within "
        f"{why.replay_gap_p50_ms:.0f} ms "
        f"at p50 ({why.replay_gap_p90_ms:.0f} ms at p90).",
        "",
        f"Queue chunks (every wave): {why.countdown.chunks}; {why.countdown.repeats} at the same "
        f"position as the one before: {why.countdown.with_clock} counted down by the time "
        f"since it (heartbeats), {why.countdown.same} the same number again, "
        f"{why.countdown.re_estimated} re-estimated by the scheduler.",
    ]


def markdown(report: Report) -> str:
    cfg, env = report.config, report.environment
    waits = sum(1 for o in report.observations if o.position is not None)
    return "\n".join(
        [
            f"Commit {env.get('commit')}, {env.get('cpus')} CPUs, Python {env.get('python')}, "
            f"RabbitMQ {env.get('rabbitmq', '?')}. {servers_text(report)}. Waves {cfg['waves']}, "
            "token delay "
            f"{cfg['token_delay_ms']:g} ms, prompt {cfg['prompt_ms_per_token']:g} ms/token, "
            f"load {cfg['load_ms']:g} ms, keep-alive {cfg['keep_alive_s']:g} s; "
            f"{len(report.observations)} requests, {waits} shown a wait, "
            f"{report.emulator_stats.get('loads')} model loads on the emulator.",
            "Times in seconds; error = estimate - actual (positive: told too long).",
            "",
            "First estimate each client was shown against its real wait to the first token:",
            "",
            "| requests | n | abs error / actual p50 | within 15 % |",
            "| --- | ---: | ---: | ---: |",
            *(
                f"| {name} | {h.n} | {h.relative_p50:.0%} | {h.within_15:.0%} |"
                for name, h in report.headline.items()
            ),
            "",
            "Actual = first queue chunk -> first token (what the client feels):",
            "",
            *stats_table("wave / position", report.by_position["first_token"]),
            "",
            "Actual = first queue chunk -> the backend starts the job (what the estimate is "
            "of; it leaves out the job's own load and prompt):",
            "",
            *stats_table("wave / position", report.by_position["start"]),
            "",
            "By wave (to first token):",
            "",
            *stats_table("wave", report.by_wave),
            "",
            "Later waves by the waiting request's model (to first token):",
            "",
            *stats_table("model", report.by_model),
            "",
            *(
                [
                    "Why, later waves: each job's price replayed with the scheduler's own "
                    "`SpeedBook`, against what the backend spent on it:",
                    "",
                    *why_lines(report.why),
                ]
                if report.why is not None
                else ["(No replay for a pool: it follows one server's run order.)"]
            ),
            "",
            "The scheduler's own record (every wave; first estimate sent -> job popped):",
            "",
            *histogram_lines(report.scheduler_histograms),
        ]
    )


def servers_text(report: Report) -> str:
    servers = report.config.get("servers", 1)
    if servers == 1:
        return "One backend server"
    split = report.emulator_stats.get("by_server") or {}
    return f"A pool of {servers} servers (requests each ran: {split})"


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.argument_parser(
        "bench/estimates.py", "Corral's queue wait estimates against the waits clients really get."
    )
    parser.add_argument("--token-delay-ms", type=float, default=20.0)
    parser.add_argument("--prompt-ms-per-token", type=float, default=1.0)
    parser.add_argument("--load-ms", type=float, default=500.0)
    parser.add_argument(
        "--waves",
        type=harness.positive_ints,
        default=[16, 12, 8, 8, 4],
        help="concurrent requests per wave; the first runs on priors (default 16,12,8,8,4)",
    )
    parser.add_argument(
        "--keep-alive-s",
        type=float,
        default=0.2,
        help="the emulator's default keep_alive: a model idle this long unloads, so a swap "
        "to the other model and back reloads it, as on a GPU with room for one "
        "(default 0.2; keep it above the gap between jobs)",
    )
    parser.add_argument(
        "--second-share",
        type=float,
        default=0.25,
        help=f"share of requests for {MODELS[1]} (default 0.25)",
    )
    parser.add_argument(
        "--spread-ms",
        type=float,
        default=1000.0,
        help="a wave's requests are sent at random times within this window (default 1000)",
    )
    parser.add_argument(
        "--system-words",
        type=harness.positive_ints,
        default=None,
        help="LOW,HIGH: a system message of that many words ahead of each user message; the "
        "emulator echoes only the user's, so reply lengths no longer follow prompt lengths "
        "(default: none)",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="emulated backend servers, as a pool (CORRAL_BACKENDS) when above 1 (default 1)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.servers < 1:
        parser.error("--servers must be at least 1")
    if min(args.token_delay_ms, args.prompt_ms_per_token, args.load_ms, args.spread_ms) < 0:
        parser.error("times must not be negative")
    if not 0 <= args.second_share <= 1:
        parser.error("--second-share must be between 0 and 1")
    if args.keep_alive_s <= 0:
        parser.error("--keep-alive-s must be positive")
    args.spread_s = args.spread_ms / 1e3
    if args.system_words is None:
        args.system_words = (0, 0)
    elif len(args.system_words) != 2 or args.system_words[0] > args.system_words[1]:
        parser.error("--system-words takes LOW,HIGH")
    else:
        args.system_words = tuple(args.system_words)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    knobs = {
        "token_delay_ms": args.token_delay_ms,
        "prompt_ms_per_token": args.prompt_ms_per_token,
        "load_ms": args.load_ms,
    }
    if args.servers == 1:
        return harness.run_with_stack(
            args, knobs, lambda stack: run_benchmark(args, stack), markdown, asdict
        )
    servers = [f"s{n}" for n in range(1, args.servers + 1)]

    def body(workdir: Path, cleanup: contextlib.ExitStack) -> Report:
        amqp_url, node = harness.start_broker(cleanup, args.amqp_url)
        stack = harness.start_services(cleanup, workdir, amqp_url, node, knobs, servers=servers)
        return asyncio.run(run_benchmark(args, stack))

    return harness.run_bench(args, body, markdown, asdict)


if __name__ == "__main__":
    sys.exit(main())
