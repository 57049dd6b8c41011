"""The latency Corral adds over calling the Ollama emulator directly, measured side by side.

    uv run python bench/latency.py [--requests N] [--clients 1,16] [--token-delay-ms D]
        [--tokens T] [--warmup W] [--profile P] [--amqp-url URL] [--json OUT]

Starts everything it needs (a throwaway RabbitMQ node unless --amqp-url is given, the emulator,
a scheduler and a gateway), then for each client count sends the same streaming /api/chat
requests straight to the emulator ("direct") and through the gateway ("corral"), alternating
batches of the two so that machine noise hits both. Linux only (CPU accounting reads /proc).
Method and results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from harness import (
    BenchError,
    Stack,
    argument_parser,
    check_backend_record,
    cpu_ns,
    environment,
    epoch_ns,
    log,
    percentile,
    positive_ints,
    run_with_stack,
)

from corral_common.topology import EVENTS_EXCHANGE, JOBS_EXCHANGE, JOBS_ROUTING_KEY
from corral_emulator import EmulatorControl, expected_reply, reply_tokens

LOOPBACK = "127.0.0.1"
MODEL = "llama3.2"
# Queue chunks are empty deltas; with them on, a waiting Corral client would get lines the
# direct client never sees. Off, both sides' first non-empty line is the first token.
REQUEST_HEADERS = {"Content-Type": "application/json", "X-Queue-Progress": "0"}
# About 80 requests per concurrent batch lets the queue sit in its steady state (15 waiting,
# 1 running) for most of the batch; one client switches sides every 10 requests, so a noisy
# second on the machine lands on both sides rather than on one.
BATCH_REQUESTS = 80
MAX_BATCH_PER_CLIENT = 10
PERCENTILES = (50, 90, 99)
# The goal for the latency Corral adds (TTFT and total) for one client.
TARGET_ADDED_P50_MS = 5.0


# -- one request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request, in milliseconds. Hop times come from wall clocks (the emulator stamps each
    chunk's `created_at`; this process and the emulator share the machine's clock)."""

    ttft_ms: float
    total_ms: float
    # Client wants to send -> the backend's handler starts (includes any queueing).
    to_backend_ms: float
    # The backend's own `total_duration`.
    backend_ms: float
    # The backend stamps the first token / the final chunk -> this client has read it.
    first_back_ms: float
    done_back_ms: float
    # Corral only: the final chunk's `queue_info.wait_time_ms`, enqueue -> scheduler starts job.
    wait_time_ms: float | None


@dataclass
class Side:
    name: str
    base_url: str
    # Ollama runs one generation at a time and the emulator does not, so direct calls take this
    # lock to be as serial as Corral's backend calls; queueing for it counts as latency.
    lock: asyncio.Lock | None = None

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/api/chat"


class Prompts:
    """Distinct prompts whose replies are exactly `tokens` tokens ("Echo:" plus one per word)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._ids = itertools.count()

    def next(self) -> tuple[bytes, str]:
        words = [f"q{next(self._ids)}", *["word"] * (self.tokens - 2)]
        prompt = " ".join(words)
        if len(reply_tokens(prompt)) != self.tokens:
            raise BenchError(f"prompt {prompt!r} does not yield {self.tokens} tokens")
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
        }
        return orjson.dumps(body), expected_reply(prompt)


@dataclass(frozen=True)
class Trace:
    """The raw clock readings of one request; `*_wall_ns` and `*_stamp_ns` are epoch ns."""

    wanted: float
    wanted_wall_ns: int
    first: float
    first_wall_ns: int
    first_stamp_ns: int
    done: float
    done_wall_ns: int
    done_stamp_ns: int
    backend_ns: int
    wait_time_ms: float | None

    @property
    def backend_start_ns(self) -> int:
        # `total_duration` runs from the handler's start to just before the final chunk.
        return self.done_stamp_ns - self.backend_ns

    def sample(self) -> Sample:
        return Sample(
            ttft_ms=(self.first - self.wanted) * 1e3,
            total_ms=(self.done - self.wanted) * 1e3,
            to_backend_ms=(self.backend_start_ns - self.wanted_wall_ns) / 1e6,
            backend_ms=self.backend_ns / 1e6,
            first_back_ms=(self.first_wall_ns - self.first_stamp_ns) / 1e6,
            done_back_ms=(self.done_wall_ns - self.done_stamp_ns) / 1e6,
            wait_time_ms=self.wait_time_ms,
        )


async def request_once(
    session: aiohttp.ClientSession, side: Side, prompts: Prompts, request_id: str | None = None
) -> Trace:
    body, expected = prompts.next()
    headers = (
        REQUEST_HEADERS if request_id is None else {**REQUEST_HEADERS, "X-Request-Id": request_id}
    )
    # Measured from the moment the client wants to send, so waiting for the lock (direct) or in
    # Corral's queue is part of the latency on both sides.
    wanted = time.perf_counter()
    wanted_wall_ns = time.time_ns()
    if side.lock is None:
        return await _exchange(session, side, body, headers, expected, wanted, wanted_wall_ns)
    async with side.lock:
        return await _exchange(session, side, body, headers, expected, wanted, wanted_wall_ns)


async def _exchange(
    session: aiohttp.ClientSession,
    side: Side,
    body: bytes,
    headers: dict[str, str],
    expected: str,
    wanted: float,
    wanted_wall_ns: int,
) -> Trace:
    first: tuple[float, int, str] | None = None
    done: tuple[float, int, dict[str, Any]] | None = None
    text: list[str] = []
    async with session.post(side.chat_url, data=body, headers=headers) as response:
        if response.status != 200:
            detail = (await response.text())[:300]
            raise BenchError(f"{side.name}: HTTP {response.status}: {detail}")
        # Read to the end of the body even after the done line, so the keep-alive connection
        # is reused instead of being closed with unread data.
        async for line in response.content:
            now = time.perf_counter()
            now_wall_ns = time.time_ns()
            chunk: dict[str, Any] = orjson.loads(line)
            if "error" in chunk:
                raise BenchError(f"{side.name}: error line in stream: {chunk['error']}")
            content = (chunk.get("message") or {}).get("content") or ""
            if content and first is None:
                first = (now, now_wall_ns, str(chunk["created_at"]))
            text.append(content)
            if chunk.get("done"):
                done = (now, now_wall_ns, chunk)
    if first is None or done is None:
        raise BenchError(f"{side.name}: stream ended without a token or without done:true")
    if "".join(text) != expected:
        raise BenchError(f"{side.name}: answer {''.join(text)!r} is not {expected!r}")
    final = done[2]
    wait_time = (final.get("queue_info") or {}).get("wait_time_ms")
    return Trace(
        wanted=wanted,
        wanted_wall_ns=wanted_wall_ns,
        first=first[0],
        first_wall_ns=first[1],
        first_stamp_ns=epoch_ns(first[2]),
        done=done[0],
        done_wall_ns=done[1],
        done_stamp_ns=epoch_ns(str(final["created_at"])),
        backend_ns=int(final.get("total_duration") or 0),
        wait_time_ms=float(wait_time) if wait_time is not None else None,
    )


# -- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    p50: float
    p90: float
    p99: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        ordered = sorted(values)
        p50, p90, p99 = (percentile(ordered, q) for q in PERCENTILES)
        mean = sum(ordered) / len(ordered) if ordered else math.nan
        return cls(p50, p90, p99, mean)

    def minus(self, other: Summary) -> Summary:
        """Per-statistic difference (a difference of percentiles, not a percentile of
        differences: the two sides' requests are not paired)."""
        return Summary(
            self.p50 - other.p50, self.p90 - other.p90, self.p99 - other.p99, self.mean - other.mean
        )


@dataclass
class SideResult:
    requests: int
    elapsed_s: float
    throughput_rps: float
    ttft_ms: Summary
    total_ms: Summary
    hops_ms: dict[str, Summary]
    # Per process taking part: CPU ms used per request while this side's batches ran.
    cpu_ms_per_request: dict[str, float]


@dataclass
class PhaseResult:
    clients: int
    requests_per_side: int
    direct: SideResult
    corral: SideResult
    added_ttft_ms: Summary
    added_total_ms: Summary
    samples: dict[str, list[Sample]] = field(repr=False)


HOPS: dict[str, Callable[[Sample], float | None]] = {
    "to_backend": lambda s: s.to_backend_ms,
    "enqueue_to_start": lambda s: s.wait_time_ms,
    "backend": lambda s: s.backend_ms,
    "first_back": lambda s: s.first_back_ms,
    "done_back": lambda s: s.done_back_ms,
}


def side_result(samples: list[Sample], elapsed_s: float, cpu_ns: dict[str, int]) -> SideResult:
    hops: dict[str, Summary] = {}
    for name, pick in HOPS.items():
        values = [v for v in map(pick, samples) if v is not None]
        if values:
            hops[name] = Summary.of(values)
    return SideResult(
        requests=len(samples),
        elapsed_s=elapsed_s,
        throughput_rps=len(samples) / elapsed_s if elapsed_s > 0 else math.nan,
        ttft_ms=Summary.of([s.ttft_ms for s in samples]),
        total_ms=Summary.of([s.total_ms for s in samples]),
        hops_ms=hops,
        cpu_ms_per_request={k: v / 1e6 / len(samples) for k, v in cpu_ns.items()},
    )


# -- profile: timestamps at each hop ---------------------------------------------------------


class BrokerTap:
    """A queue of our own bound next to the scheduler's and the gateway's: RabbitMQ hands it a
    copy of every job and event, so its arrival times show when each hop crossed the broker
    (as seen by a consumer on this machine, like the real ones). It adds routing work, so it
    runs only during the profile, never during the measured batches."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self.seen: dict[str, dict[str, int]] = {}
        self.token_events: dict[str, int] = {}
        self._connection: AbstractConnection | None = None

    async def __aenter__(self) -> BrokerTap:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(await channel.get_exchange(JOBS_EXCHANGE), JOBS_ROUTING_KEY)
        await queue.bind(await channel.get_exchange(EVENTS_EXCHANGE), "gw.#")
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.time_ns()
        if message.exchange == JOBS_EXCHANGE:
            request_id, kind = str(orjson.loads(message.body)["request_id"]), "job"
        else:
            # gw.<gateway id>.<request id>.<kind>; ids never contain dots.
            request_id, kind = (message.routing_key or "").rsplit(".", 2)[-2:]
        self.seen.setdefault(request_id, {}).setdefault(kind, now)
        if kind == "token":
            self.token_events[request_id] = self.token_events.get(request_id, 0) + 1


PROFILE_STEPS: dict[str, str] = {
    "job": "RabbitMQ routes the job (gateway has parsed and published it)",
    "accepted": "scheduler admitted it (`accepted` event routed)",
    "backend_start": "backend handler starts",
    "backend_first": "backend stamps first token",
    "started": "scheduler saw the backend's 200 (`started` event routed)",
    "token": "first `token` event routed",
    "client_first": "client reads first token",
    "backend_done": "backend stamps final chunk",
    "done": "`done` event routed",
    "client_done": "client reads done line",
}


@dataclass
class ProfileResult:
    requests: int
    # p50 over requests of each point's time since the client wanted to send.
    since_send_ms: dict[str, float]
    token_events_per_request: float


async def run_profile(
    count: int, corral: Side, prompts: Prompts, amqp_url: str, run_id: str
) -> ProfileResult:
    log(f"profile: {count} single-client requests through Corral with a broker tap")
    traces: dict[str, Trace] = {}
    # In this process: a separate tap process competing for the two cores disturbed the
    # request more than the tap's callbacks do here.
    async with BrokerTap(amqp_url) as tap, aiohttp.ClientSession() as session:
        for _ in range(3):
            await request_once(session, corral, prompts)
        for index in range(count):
            request_id = f"{run_id}-{index}"
            traces[request_id] = await request_once(session, corral, prompts, request_id)
        # Let the last copies reach the tap.
        await asyncio.sleep(0.2)
    since: dict[str, list[float]] = {name: [] for name in PROFILE_STEPS}
    for request_id, trace in traces.items():
        point = {
            **tap.seen.get(request_id, {}),
            "backend_start": trace.backend_start_ns,
            "backend_first": trace.first_stamp_ns,
            "client_first": trace.first_wall_ns,
            "backend_done": trace.done_stamp_ns,
            "client_done": trace.done_wall_ns,
        }
        for name, values in since.items():
            if name in point:
                values.append((point[name] - trace.wanted_wall_ns) / 1e6)
    medians = {name: percentile(sorted(v), 50) for name, v in since.items() if v}
    batches = [tap.token_events.get(request_id, 0) for request_id in traces]
    return ProfileResult(
        count,
        dict(sorted(medians.items(), key=lambda item: item[1])),
        sum(batches) / len(batches) if batches else math.nan,
    )


class CpuMeter:
    """CPU time used by each process taking part, from /proc/<pid>/task/*/schedstat (ns, all
    threads; Linux only). Read between batches, never inside the timed window."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, int]:
        return {name: cpu_ns(*pids) for name, pids in self.groups.items()}


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    clients: int
    per_client: int
    batch: int
    warmup_per_client: int


def plan_for(clients: int, requests: int, warmup: int) -> Plan:
    per_client = max(1, math.ceil(requests / clients))
    batch = min(MAX_BATCH_PER_CLIENT, max(1, math.ceil(BATCH_REQUESTS / clients)))
    # At least two batches a side, so the sides alternate even in short runs.
    batch = max(1, min(batch, math.ceil(per_client / 2)))
    return Plan(clients, per_client, batch, math.ceil(warmup / clients))


async def run_batch(
    sessions: list[aiohttp.ClientSession],
    side: Side,
    prompts: Prompts,
    per_client: int,
    out: list[Sample] | None,
) -> float:
    """Every client sends `per_client` requests back to back; returns the wall time."""

    async def client(session: aiohttp.ClientSession) -> list[Sample]:
        return [(await request_once(session, side, prompts)).sample() for _ in range(per_client)]

    started = time.perf_counter()
    results = await asyncio.gather(*(client(s) for s in sessions))
    elapsed = time.perf_counter() - started
    if out is not None:
        for samples in results:
            out.extend(samples)
    return elapsed


async def run_phase(
    plan: Plan, direct: Side, corral: Side, prompts: Prompts, meter: CpuMeter
) -> PhaseResult:
    log(
        f"{plan.clients} client(s): {plan.per_client} requests each per side, "
        f"batches of {plan.batch}, warm-up {plan.warmup_per_client}"
    )
    # One session (so one keep-alive connection per host) per client, as real clients have.
    sessions = [aiohttp.ClientSession() for _ in range(plan.clients)]
    try:
        for side in (direct, corral):
            await run_batch(sessions, side, prompts, plan.warmup_per_client, None)
        samples: dict[str, list[Sample]] = {direct.name: [], corral.name: []}
        elapsed = {direct.name: 0.0, corral.name: 0.0}
        cpu: dict[str, dict[str, int]] = {direct.name: {}, corral.name: {}}
        remaining = plan.per_client
        for index in itertools.count():
            if remaining <= 0:
                break
            count = min(plan.batch, remaining)
            remaining -= count
            # ABBA order: neither side always runs right after the other's batch.
            order = (direct, corral) if index % 2 == 0 else (corral, direct)
            for side in order:
                before = meter.snapshot()
                elapsed[side.name] += await run_batch(
                    sessions, side, prompts, count, samples[side.name]
                )
                for name, used in meter.snapshot().items():
                    spent = cpu[side.name]
                    spent[name] = spent.get(name, 0) + used - before[name]
    finally:
        for session in sessions:
            await session.close()
    direct_result = side_result(samples[direct.name], elapsed[direct.name], cpu[direct.name])
    corral_result = side_result(samples[corral.name], elapsed[corral.name], cpu[corral.name])
    return PhaseResult(
        clients=plan.clients,
        requests_per_side=plan.clients * plan.per_client,
        direct=direct_result,
        corral=corral_result,
        added_ttft_ms=corral_result.ttft_ms.minus(direct_result.ttft_ms),
        added_total_ms=corral_result.total_ms.minus(direct_result.total_ms),
        samples=samples,
    )


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    phases: list[PhaseResult]
    profile: ProfileResult | None
    emulator_stats: dict[str, Any]


async def run_benchmark(args: argparse.Namespace, stack: Stack) -> Report:
    direct = Side("direct", stack.emulator_url, asyncio.Lock())
    corral = Side("corral", stack.gateway_url)
    cpu_groups = {"client": [os.getpid()], **stack.pids()}
    prompts = Prompts(args.tokens)
    async with EmulatorControl(stack.emulator_url) as control:
        await control.reset()
        phases = []
        sent = 0
        for clients in args.clients:
            plan = plan_for(clients, args.requests, args.warmup)
            phases.append(await run_phase(plan, direct, corral, prompts, CpuMeter(cpu_groups)))
            sent += 2 * clients * (plan.per_client + plan.warmup_per_client)
        profile = None
        if args.profile > 0:
            run_id = f"bench{os.getpid()}"
            profile = await run_profile(args.profile, corral, prompts, stack.amqp_url, run_id)
            sent += args.profile + 3
        stats = await control.stats()
    # Sanity checks that make the comparison meaningful: every Corral request really reached
    # this emulator (no other scheduler on the broker took a job), and both sides were serial.
    check_backend_record(stats, sent)
    return Report(
        config={
            "requests": args.requests,
            "clients": args.clients,
            "token_delay_ms": args.token_delay_ms,
            "tokens": args.tokens,
            "warmup": args.warmup,
            "profile": args.profile,
            "model": MODEL,
            "broker": "external" if args.amqp_url else "throwaway node",
        },
        environment=await environment(stack.amqp_url),
        phases=phases,
        profile=profile,
        emulator_stats=stats,
    )


# -- output -----------------------------------------------------------------------------------


def _row(label: str, side: str, summary: Summary, bold: bool = False) -> str:
    cells = [summary.p50, summary.p90, summary.p99, summary.mean]
    text = [f"{v:+.2f}" if bold else f"{v:.2f}" for v in cells]
    if bold:
        text = [f"**{t}**" for t in text]
        side = f"**{side}**"
    return f"| {label} | {side} | " + " | ".join(text) + " |"


HOP_LABELS = {
    "to_backend": "client wants to send -> backend handler starts",
    "enqueue_to_start": "  of which: gateway enqueue -> scheduler starts job (`wait_time_ms`)",
    "backend": "backend's own `total_duration`",
    "first_back": "backend stamps first token -> client reads it",
    "done_back": "backend stamps final chunk -> client reads it",
}


def markdown(report: Report) -> str:
    cfg, env = report.config, report.environment
    lines = [
        f"Commit {env.get('commit')}, RabbitMQ {env.get('rabbitmq', '?')}, "
        f"{env.get('cpus')} CPUs. Token delay {cfg['token_delay_ms']:g} ms, "
        f"{cfg['tokens']} tokens per reply; times in ms; added = corral - direct per statistic.",
        "",
    ]
    for phase in report.phases:
        if phase.clients == 1:
            ttft, total = phase.added_ttft_ms.p50, phase.added_total_ms.p50
            verdict = "met" if max(ttft, total) < TARGET_ADDED_P50_MS else "missed"
            lines += [
                f"Target (< {TARGET_ADDED_P50_MS:g} ms added at p50, one client): {verdict} "
                f"(TTFT {ttft:+.2f} ms, total {total:+.2f} ms).",
                "",
            ]
    lines += [
        "| clients | metric | side | p50 | p90 | p99 | mean |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for phase in report.phases:
        c = str(phase.clients)
        lines += [
            _row(f"{c} | TTFT", "direct", phase.direct.ttft_ms),
            _row(f"{c} | TTFT", "corral", phase.corral.ttft_ms),
            _row(f"{c} | TTFT", "added", phase.added_ttft_ms, bold=True),
            _row(f"{c} | total", "direct", phase.direct.total_ms),
            _row(f"{c} | total", "corral", phase.corral.total_ms),
            _row(f"{c} | total", "added", phase.added_total_ms, bold=True),
        ]
    lines += [
        "",
        "| clients | requests per side | direct req/s | corral req/s | corral / direct |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for phase in report.phases:
        d, k = phase.direct.throughput_rps, phase.corral.throughput_rps
        lines.append(
            f"| {phase.clients} | {phase.requests_per_side} | {d:.1f} | {k:.1f} | {k / d:.2f} |"
        )
    names = list(report.phases[0].corral.cpu_ms_per_request) if report.phases else []
    lines += [
        "",
        "CPU time per request (ms), by process, while each side's batches ran:",
        "",
        "| clients | side | " + " | ".join(names) + " | all |",
        "| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for phase in report.phases:
        for side_name, side in (("direct", phase.direct), ("corral", phase.corral)):
            cpu = side.cpu_ms_per_request
            cells = " | ".join(f"{cpu.get(n, 0.0):.2f}" for n in names)
            lines.append(f"| {phase.clients} | {side_name} | {cells} | {sum(cpu.values()):.2f} |")
    for phase in report.phases:
        lines += [
            "",
            f"Where the time goes, {phase.clients} client(s), p50 of each hop in ms "
            "(hop medians do not add up to the total's median):",
            "",
            "| hop | direct | corral | added |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, label in HOP_LABELS.items():
            d_hop = phase.direct.hops_ms.get(name)
            k_hop = phase.corral.hops_ms.get(name)
            d_text = f"{d_hop.p50:.2f}" if d_hop else "-"
            k_text = f"{k_hop.p50:.2f}" if k_hop else "-"
            added = f"{k_hop.p50 - d_hop.p50:+.2f}" if d_hop and k_hop else "-"
            lines.append(f"| {label} | {d_text} | {k_text} | {added} |")
    profile = report.profile
    if profile is not None:
        lines += [
            "",
            f"One request's path through Corral, p50 over {profile.requests} single-client "
            "requests with a broker tap (ms):",
            "",
            "| point | since the client wanted to send | step |",
            "| --- | ---: | ---: |",
        ]
        previous = 0.0
        # In order of median time; the step is the difference between consecutive medians.
        for name, since in profile.since_send_ms.items():
            lines.append(f"| {PROFILE_STEPS[name]} | {since:.2f} | {since - previous:+.2f} |")
            previous = since
        lines += [
            "",
            f"Token events per request: {profile.token_events_per_request:.1f} "
            f"(for {cfg['tokens']} tokens). The tap adds work and runs after the measured "
            "batches: read it for the order and size of the steps, not for absolute times.",
        ]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    data = asdict(report)
    for phase in data["phases"]:
        # Raw per-request numbers, for anyone who wants other statistics.
        phase["samples"] = {
            side: [{k: v for k, v in s.items() if v is not None} for s in samples]
            for side, samples in phase["samples"].items()
        }
    return data


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(
        "bench/latency.py", "Latency Corral adds over calling the Ollama emulator directly."
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=320,
        help="measured requests per side for each client count, split evenly across the "
        "clients and rounded up (default 320: 1x320 and 16x20)",
    )
    parser.add_argument(
        "--clients",
        type=positive_ints,
        default=[1, 16],
        help="comma-separated concurrent client counts (default 1,16)",
    )
    parser.add_argument(
        "--token-delay-ms", type=float, default=0.0, help="emulator delay before each token"
    )
    parser.add_argument("--tokens", type=int, default=20, help="tokens per reply (at least 2)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=32,
        help="unmeasured requests per side before each client count (default 32)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=100,
        help="afterwards, single-client Corral requests timed at each broker hop (0: skip)",
    )
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (the reply always starts with 'Echo:')")
    if args.requests < 1 or min(args.warmup, args.profile, args.token_delay_ms) < 0:
        parser.error("--requests must be positive; the other numbers not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_with_stack(
        args,
        {"token_delay_ms": args.token_delay_ms},
        lambda stack: run_benchmark(args, stack),
        markdown,
        report_json,
    )


if __name__ == "__main__":
    sys.exit(main())
