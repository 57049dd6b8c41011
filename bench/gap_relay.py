"""The backend's idle gap between queued jobs, and the token relay rate of one long stream,
through Corral and directly from the Ollama emulator.

    uv run python bench/gap_relay.py [--clients 16] [--requests 400] [--tokens 8]
        [--gap-token-delay-ms 0] [--repeats 3] [--relay-tokens 5000] [--relay-repeats 5]
        [--token-batch-ms MS] [--amqp-url URL] [--json OUT]

Starts everything it needs (a throwaway RabbitMQ node unless --amqp-url is given, the emulator
with no token delay, a scheduler and a gateway), then:

- **Gap**: `--clients` clients each send streaming /api/chat requests back to back, so the
  queue always holds work, and the emulator's request timeline (`/_emulator/timeline`: each
  generation's handler start and response end, monotonic clock) gives the backend's idle gaps,
  from the end of one response to the start of the next request. Through Corral ("corral")
  and straight to the emulator with a client-side lock ("direct", as serial as Corral's
  backend calls; its gap is the lock's hand-over to the next client and that client's send).
  The first and last `--clients` gaps of each run (the queue filling and draining) are left out.
- **Relay**: one streaming /api/chat whose reply is `--relay-tokens` tokens, read line by
  line, directly and through the gateway, alternating; tokens per second from wanting to send
  to reading the final line, and from the first token to the final line.

Linux only in practice (the monotonic clock must be shared with the emulator's process).

`--hand-over` runs instead, in this process and without a cluster, the scheduler's executor over
a lane of `--clients` waiting jobs with a backend that answers at once and a broker that takes
every publish at once: the CPU time (this thread's) and the event loop rounds from one job's
backend response closing to the next job's request opening. Little else shares the process, so
this is the executor's own part of the gap, hardly moved by what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from harness import (
    BenchError,
    Stack,
    argument_parser,
    cpu_ns,
    environment,
    log,
    percentile,
    run_bench,
    start_broker,
    start_services,
)
from latency import Prompts, Side, request_once

from corral_emulator import EmulatorControl
from corral_emulator.timeline import idle_gaps_ns

PERCENTILES = (50, 90, 99)
# The relay stream's model: its prompt (the reply echoes it) needs a window of twice its length.
RELAY_MODEL = "qwen2.5:0.5b"
RELAY_NUM_CTX = 32768
# The idle gap the scheduler should leave between two queued jobs (p50).
TARGET_GAP_P50_MS = 1.0
# The relay rate through Corral, as a share of the direct rate, on a long stream.
TARGET_RELAY_RATIO = 0.9


class RelayPrompts(Prompts):
    """`Prompts` for a reply of `tokens` tokens on a model with room for prompt and reply."""

    def next(self) -> tuple[bytes, str]:
        body, expected = super().next()
        request = orjson.loads(body)
        request["model"] = RELAY_MODEL
        request["options"] = {"num_ctx": RELAY_NUM_CTX}
        return orjson.dumps(request), expected


@dataclass(frozen=True)
class GapRun:
    side: str
    requests: int
    elapsed_s: float
    # Gaps in ms, in start order, the filling and draining of the queue left out.
    gaps_ms: list[float]
    # CPU time per request (ms) by process over the run (CpuMeter).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def quantiles(self) -> dict[str, float]:
        ordered = sorted(self.gaps_ms)
        return {f"p{q}": percentile(ordered, q) for q in PERCENTILES}


@dataclass(frozen=True)
class RelayRun:
    side: str
    tokens: int
    # Wanting to send -> the final line read; the first token read -> the final line read.
    total_s: float
    streaming_s: float
    # CPU time of the stream (ms) by process (CpuMeter).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s

    @property
    def streaming_tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.streaming_s if self.streaming_s > 0 else 0.0


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    gap_runs: list[GapRun]
    relay_runs: list[RelayRun]
    loadavg: list[str]


def _median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


class CpuMeter:
    """CPU time by process (every thread, from schedstat: harness.cpu_ns) between two reads,
    this benchmark's own process as `client`. On a machine shared with other work, wall-clock
    rates move with the load; the CPU each process spends on a request moves much less."""

    def __init__(self, stack: Stack) -> None:
        self.groups = {**stack.pids(), "client": [os.getpid()]}

    def read(self) -> dict[str, int]:
        return {name: cpu_ns(*pids) for name, pids in self.groups.items()}

    def since(self, before: dict[str, int], count: int) -> dict[str, float]:
        """ms per request since `before`, over `count` requests."""
        after = self.read()
        return {name: (after[name] - before[name]) / 1e6 / count for name in self.groups}


async def gap_run(
    control: EmulatorControl, side: Side, clients: int, requests: int, prompts: Prompts
) -> GapRun:
    await control.reset()
    per_client = max(1, requests // clients)

    async def client() -> None:
        # One session (one keep-alive connection) per client, as real clients have.
        async with aiohttp.ClientSession() as session:
            for _ in range(per_client):
                await request_once(session, side, prompts)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    entries = await control.timeline()
    done = [e for e in entries if e["outcome"] == "completed"]
    if len(done) != clients * per_client:
        raise BenchError(f"{side.name}: {len(done)} generations completed, expected {len(entries)}")
    if (await control.stats())["max_active"] != 1:
        raise BenchError(f"{side.name}: the emulator ran generations at once")
    gaps = [gap / 1e6 for gap in idle_gaps_ns(done)]
    steady = gaps[clients:-clients] if len(gaps) > 2 * clients else gaps
    return GapRun(side.name, len(done), elapsed, steady)


async def relay_run(side: Side, prompts: Prompts) -> RelayRun:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        trace = await request_once(session, side, prompts)
    return RelayRun(side.name, prompts.tokens, trace.done - trace.wanted, trace.done - trace.first)


async def measure(args: argparse.Namespace, stack: Stack) -> Report:
    meter = CpuMeter(stack)
    direct = Side("direct", stack.emulator_url, asyncio.Lock())
    corral = Side("corral", stack.gateway_url)
    prompts = Prompts(args.tokens)
    relay_prompts = RelayPrompts(args.relay_tokens)
    loads: list[str] = []
    gap_runs: list[GapRun] = []
    relay_runs: list[RelayRun] = []
    async with EmulatorControl(stack.emulator_url) as control:
        await control.configure(token_delay_ms=args.gap_token_delay_ms)
        log("warming up")
        await gap_run(control, direct, args.clients, 2 * args.clients, prompts)
        await gap_run(control, corral, args.clients, 2 * args.clients, prompts)
        for repeat in range(args.repeats):
            for side in (direct, corral) if repeat % 2 == 0 else (corral, direct):
                before = meter.read()
                run = await gap_run(control, side, args.clients, args.requests, prompts)
                run = replace(run, cpu_ms=meter.since(before, run.requests))
                log(f"gap {side.name}: {run.quantiles()} ({run.jobs_per_s:.0f} jobs/s)")
                gap_runs.append(run)
            loads.append(_loadavg())
        await control.reset()
        await control.configure(token_delay_ms=0)
        for repeat in range(args.relay_repeats):
            for side in (direct, corral) if repeat % 2 == 0 else (corral, direct):
                before = meter.read()
                relay = await relay_run(side, relay_prompts)
                relay = replace(relay, cpu_ms=meter.since(before, 1))
                log(f"relay {side.name}: {relay.tokens_per_s:.0f} tokens/s")
                relay_runs.append(relay)
            loads.append(_loadavg())
    return Report(
        config={
            "clients": args.clients,
            "requests": args.requests,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "relay_tokens": args.relay_tokens,
            "relay_repeats": args.relay_repeats,
            "gap_token_delay_ms": args.gap_token_delay_ms,
            "token_batch_ms": args.token_batch_ms,
            "broker": "external" if args.amqp_url else "throwaway node",
        },
        environment=await environment(stack.amqp_url),
        gap_runs=gap_runs,
        relay_runs=relay_runs,
        loadavg=loads,
    )


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "unknown"


def summary(report: Report) -> dict[str, Any]:
    gaps: dict[str, Any] = {}
    for side in ("direct", "corral"):
        runs = [r for r in report.gap_runs if r.side == side]
        pooled = sorted(g for r in runs for g in r.gaps_ms)
        gaps[side] = {
            **{f"p{q}_ms": _median([r.quantiles()[f"p{q}"] for r in runs]) for q in PERCENTILES},
            "pooled": {f"p{q}_ms": percentile(pooled, q) for q in PERCENTILES},
            "gaps": len(pooled),
            "jobs_per_s": _median([r.jobs_per_s for r in runs]),
        }
    relay: dict[str, Any] = {}
    for side in ("direct", "corral"):
        streams = [r for r in report.relay_runs if r.side == side]
        relay[side] = {
            "tokens_per_s": _median([r.tokens_per_s for r in streams]),
            "streaming_tokens_per_s": _median([r.streaming_tokens_per_s for r in streams]),
        }
    for side in ("direct", "corral"):
        for what, runs_of in (("gap", report.gap_runs), ("relay", report.relay_runs)):
            runs_cpu = [r.cpu_ms for r in runs_of if r.side == side and r.cpu_ms]
            names = sorted({name for cpu in runs_cpu for name in cpu})
            target = gaps if what == "gap" else relay
            target[side]["cpu_ms"] = {
                name: _median([cpu.get(name, 0.0) for cpu in runs_cpu]) for name in names
            }
    ratio = relay["corral"]["tokens_per_s"] / relay["direct"]["tokens_per_s"]
    streaming_ratio = (
        relay["corral"]["streaming_tokens_per_s"] / relay["direct"]["streaming_tokens_per_s"]
    )
    return {"gap": gaps, "relay": relay, "relay_ratio": ratio, "streaming_ratio": streaming_ratio}


def markdown(report: Report) -> str:
    result = summary(report)
    config = report.config
    batch_ms = config["token_batch_ms"]
    window = "the scheduler's default" if batch_ms is None else f"{batch_ms:g} ms"
    lines = [
        f"Idle gap between queued jobs ({config['clients']} clients, {config['requests']} "
        f"requests of {config['tokens']} tokens per run, token delay "
        f"{config['gap_token_delay_ms']:g} ms, median of "
        f"{config['repeats']} runs per side):",
        "",
        "| side | gap p50 ms | p90 ms | p99 ms | jobs/s |",
        "|---|---|---|---|---|",
    ]
    for side in ("direct", "corral"):
        gap = result["gap"][side]
        lines.append(
            f"| {side} | {gap['p50_ms']:.3f} | {gap['p90_ms']:.3f} | {gap['p99_ms']:.3f} "
            f"| {gap['jobs_per_s']:.0f} |"
        )
    lines += [
        "",
        f"Token relay, one stream of {config['relay_tokens']} tokens (median of "
        f"{config['relay_repeats']} per side):",
        "",
        "| side | tokens/s (send to done) | tokens/s (first token to done) |",
        "|---|---|---|",
    ]
    for side in ("direct", "corral"):
        relay = result["relay"][side]
        lines.append(
            f"| {side} | {relay['tokens_per_s']:.0f} | {relay['streaming_tokens_per_s']:.0f} |"
        )
    names = sorted(result["relay"]["corral"]["cpu_ms"])
    lines += [
        "",
        "CPU time (ms) by process: per gap-run job, per relay stream (medians of the runs):",
        "",
        "| run | side | " + " | ".join(names) + " | all |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for what, unit in (("gap", "job"), ("relay", "stream")):
        for side in ("direct", "corral"):
            cpu = result[what][side]["cpu_ms"]
            cells = [f"{cpu.get(name, 0.0):.2f}" for name in names]
            lines.append(
                f"| {what} (per {unit}) | {side} | " + " | ".join(cells) + f" | "
                f"{sum(cpu.values()):.2f} |"
            )
    lines += [
        "",
        f"Corral / direct: {result['relay_ratio']:.2f}x (first token to done: "
        f"{result['streaming_ratio']:.2f}x); target {TARGET_RELAY_RATIO}x. Corral gap p50 "
        f"{result['gap']['corral']['p50_ms']:.3f} ms; target {TARGET_GAP_P50_MS} ms.",
        f"Token batch window: {window}. "
        f"Load average after each repeat: {', '.join(report.loadavg)}; commit "
        f"{report.environment.get('commit')}.",
    ]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    return {
        "config": report.config,
        "environment": report.environment,
        "summary": summary(report),
        "gap_runs": [
            {**asdict(run), "quantiles_ms": run.quantiles(), "jobs_per_s": run.jobs_per_s}
            for run in report.gap_runs
        ],
        "relay_runs": [
            {
                **asdict(run),
                "tokens_per_s": run.tokens_per_s,
                "streaming_tokens_per_s": run.streaming_tokens_per_s,
            }
            for run in report.relay_runs
        ],
        "loadavg": report.loadavg,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(
        "bench/gap_relay.py",
        "The backend's idle gap between queued jobs, and the relay rate of one long stream.",
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument(
        "--requests", type=int, default=400, help="requests per gap run, split over the clients"
    )
    parser.add_argument("--tokens", type=int, default=8, help="tokens per reply in the gap runs")
    parser.add_argument(
        "--gap-token-delay-ms",
        type=float,
        default=0.0,
        help="the emulator's delay per token in the gap runs (0: the services' CPU per job is "
        "the limit; a few ms: each generation outlasts that work and only the hand-over is left)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="gap runs per side")
    parser.add_argument(
        "--relay-tokens", type=int, default=5000, help="tokens in the relay stream (5000)"
    )
    parser.add_argument("--relay-repeats", type=int, default=5, help="relay streams per side")
    parser.add_argument(
        "--hand-over",
        action="store_true",
        help="only the executor's hand-over between two jobs, in process (no cluster)",
    )
    parser.add_argument(
        "--token-batch-ms",
        type=float,
        help="the scheduler's token batch window (CORRAL_TOKEN_BATCH_MS); its default if unset",
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.requests, args.repeats, args.relay_repeats) < 1:
        parser.error("counts must be positive")
    if args.relay_tokens * 2 > RELAY_NUM_CTX:
        parser.error(f"--relay-tokens at most {RELAY_NUM_CTX // 2}")
    if min(args.tokens, args.relay_tokens) < 2:
        parser.error("replies are at least 2 tokens ('Echo:' and a word)")
    return args


class _CountingLoop(asyncio.SelectorEventLoop):
    rounds = 0

    def _run_once(self) -> None:
        _CountingLoop.rounds += 1
        super()._run_once()  # type: ignore[misc]


def hand_over(args: argparse.Namespace) -> str:
    from corral_common.messages import Job
    from corral_scheduler.eta import SpeedBook
    from corral_scheduler.events import EventSink
    from corral_scheduler.executor import Executor
    from corral_scheduler.lane import ONE_BACKEND, Entry, Lane

    opened: list[tuple[int, int]] = []
    closed: list[tuple[int, int]] = []

    class Backend:
        kind = "ollama"

        @contextlib.asynccontextmanager
        async def stream(self, kind: str, payload: dict[str, Any]) -> Any:
            opened.append((time.thread_time_ns(), _CountingLoop.rounds))

            async def chunks() -> Any:
                for n in range(args.tokens):
                    yield {"message": {"role": "assistant", "content": f" t{n}"}, "done": False}
                yield {"message": {"role": "assistant", "content": ""}, "done": True}

            try:
                yield chunks()
            finally:
                closed.append((time.thread_time_ns(), _CountingLoop.rounds))

    class Broker:
        async def publish_event(self, routing_key: str, body: bytes, *, durable: bool) -> None:
            pass

    class Delivery:
        redelivered = False
        headers: dict[str, Any] = {}

        def __init__(self, acked: asyncio.Queue[None]) -> None:
            self.acked = acked

        async def ack(self) -> None:
            self.acked.put_nowait(None)

    async def run() -> None:
        speeds = SpeedBook(prompt_tokens_per_s=400, eval_tokens_per_s=15, load_ms=0, eval_count=10)
        executor = Executor(Lane(), {ONE_BACKEND: Backend()}, EventSink(Broker()), speeds)  # type: ignore[dict-item,arg-type]
        acked: asyncio.Queue[None] = asyncio.Queue()

        def push(n: int) -> None:
            job = Job(
                request_id=f"r{n}",
                gateway_id="gw",
                kind="chat",
                model="llama3.2",
                payload={"model": "llama3.2"},
                enqueued_at=time.time(),
            )
            entry = Entry(job, Delivery(acked), 0, time.monotonic(), arrival=n)
            executor.lane.push(entry)

        for n in range(args.clients):
            push(n)
        task = asyncio.create_task(executor.run_forever())
        for n in range(args.requests):
            await acked.get()
            push(args.clients + n)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    loop = _CountingLoop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    pairs = list(zip(closed, opened[1:], strict=False))[args.clients :]
    cpu_us = sorted((o[0] - c[0]) / 1000 for c, o in pairs)
    rounds = sorted(o[1] - c[1] for c, o in pairs)
    return (
        f"Hand-over in process ({len(pairs)} jobs, {args.clients} waiting, {args.tokens} tokens): "
        f"CPU from one response closed to the next request opened p50 "
        f"{percentile(cpu_us, 50):.0f} us, p90 {percentile(cpu_us, 90):.0f} us; event loop "
        f"rounds p50 {percentile(rounds, 50):.0f}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hand_over:
        print(hand_over(args))
        return 0
    env = {} if args.token_batch_ms is None else {"CORRAL_TOKEN_BATCH_MS": str(args.token_batch_ms)}

    def body(workdir: Path, cleanup: contextlib.ExitStack) -> Report:
        amqp_url, node = start_broker(cleanup, args.amqp_url)
        stack = start_services(cleanup, workdir, amqp_url, node, {"token_delay_ms": 0}, env=env)
        return asyncio.run(measure(args, stack))

    return run_bench(args, body, markdown, report_json)


if __name__ == "__main__":
    sys.exit(main())
