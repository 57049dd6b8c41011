"""A crowd of waiting streaming clients on one gateway: how soon each is told its place, whether
its place only falls, what the waiting costs the gateway, and what the lane's position traffic is.

    uv run python bench/crowd.py [--clients N] [--rate R] [--tokens T] [--token-delay-ms D]
        [--admission-window W] [--rounds K] [--amqp-url URL] [--json OUT]
    uv run python bench/crowd.py --lane-cost 512,2000,10000

Starts its own stack (a throwaway RabbitMQ node unless --amqp-url is given, the emulator, one
scheduler, one gateway: bench/harness.py; and a model manager, so the gateway knows the models
as deployed, unless --no-model-manager), raises this process's open-file limit, lets the
gateway hold N connections (`CORRAL_MAX_CONNECTIONS`, no per-address cap), then sends N
streaming /api/chat requests at R a second (0: all at once), each on its own connection, and
reads every stream to its end. `--rounds` repeats the crowd on the same gateway: its memory after
a later round against the first says whether anything per request stays behind.

Per client: time to the response headers and to the first queue chunk (`queue_info`), both from
the moment the request is sent; whether the positions it was shown (the `X-Queue-Position`
header, then each chunk) only fell. For the run: its length against the backend's own work (the
sum of the emulator's `total_duration` over every answer), the position messages the scheduler
published (counted by a queue of this benchmark's own bound to them on `corral.events`: one
`Positions` message per gateway per round, and each job's first `position` event), the
provisional positions the gateway told and the positions it held (its /metrics), and the
gateway's RSS before, at its peak and after.

`--lane-cost` measures the scheduler's side alone, in process: one `Lane.snapshot()`, one
position round (`PositionBroadcaster.broadcast`) and admission's first position for one job
(pushed behind the others and placed: from the lane's kept snapshot in a crowd, from a new one
after a change) over a lane of each size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
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
    positive_ints,
    run_bench,
    start_broker,
    start_services,
)

from corral_common.gc_pauses import frozen_heap
from corral_common.topology import EVENTS_EXCHANGE
from corral_devstack.cluster import Cluster
from corral_emulator import expected_reply, reply_tokens

MODEL = "llama3.2"
HEADERS = {"Content-Type": "application/json"}
# How often the gateway's RSS is read during a round.
RSS_EVERY_S = 0.25
# How often the benchmark's own event loop lag is sampled.
LAG_EVERY_S = 0.02
# Left after a round before its "after" RSS is read, so the gateway has closed every connection.
SETTLE_S = 5.0


# -- one client -------------------------------------------------------------------------------


@dataclass
class Client:
    """One request, times in ms from the moment it was sent."""

    # The connection accepted (a new one per client), then the response's headers.
    connected_ms: float | None = None
    headers_ms: float | None = None
    first_queue_ms: float | None = None
    first_token_ms: float | None = None
    done_ms: float | None = None
    header_position: int | None = None
    positions: list[int] = field(default_factory=list)
    rises: int = 0
    backend_ns: int = 0
    error: str | None = None

    @property
    def first_position_ms(self) -> float | None:
        """When its place was first known: the header's position, else its first queue chunk."""
        return self.headers_ms if self.header_position is not None else self.first_queue_ms


class Prompts:
    """Distinct prompts whose replies are exactly `tokens` tokens."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._ids = itertools.count()

    def next(self) -> tuple[bytes, str]:
        prompt = " ".join([f"c{next(self._ids)}", *["word"] * (self.tokens - 2)])
        if len(reply_tokens(prompt)) != self.tokens:
            raise BenchError(f"prompt {prompt!r} does not yield {self.tokens} tokens")
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True}
        return orjson.dumps(body), expected_reply(prompt)


async def one_client(
    session: aiohttp.ClientSession, url: str, body: bytes, expected: str, client: Client
) -> None:
    sent = time.perf_counter()

    def since() -> float:
        return (time.perf_counter() - sent) * 1e3

    def connected() -> None:
        client.connected_ms = since()

    text: list[str] = []
    try:
        async with session.post(
            f"{url}/api/chat", data=body, headers=HEADERS, trace_request_ctx=connected
        ) as response:
            client.headers_ms = since()
            if response.status != 200:
                client.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            header = response.headers.get("X-Queue-Position")
            if header is not None:
                client.header_position = int(header)
                client.positions.append(int(header))
            async for line in response.content:
                chunk = orjson.loads(line)
                if "error" in chunk:
                    client.error = f"error line: {chunk['error']}"
                    return
                info = chunk.get("queue_info")
                if info is not None and not chunk.get("done"):
                    if client.first_queue_ms is None:
                        client.first_queue_ms = since()
                    position = int(info["position"])
                    if client.positions and position > client.positions[-1]:
                        client.rises += 1
                    client.positions.append(position)
                    continue
                content = (chunk.get("message") or {}).get("content") or ""
                if content and client.first_token_ms is None:
                    client.first_token_ms = since()
                text.append(content)
                if chunk.get("done"):
                    client.done_ms = since()
                    client.backend_ns = int(chunk.get("total_duration") or 0)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        client.error = f"{type(exc).__name__}: {exc}"
        return
    if client.done_ms is None:
        client.error = "stream ended without done:true"
    elif "".join(text) != expected:
        client.error = f"answer {''.join(text)[:60]!r} is not {expected[:60]!r}"


# -- the gateway's side -----------------------------------------------------------------------


def loadavg() -> list[str]:
    with open("/proc/loadavg") as file:
        return file.read().split(" ", 3)[:3]


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far."""
    return cpu_ns(pid) / 1e9


async def _on_connected(
    session: aiohttp.ClientSession,
    context: Any,
    params: aiohttp.TraceConnectionCreateEndParams,
) -> None:
    if callable(context.trace_request_ctx):
        context.trace_request_ctx()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    """A sample named with its labels, or the sum of an unlabelled name's family, from /metrics."""
    async with session.get(f"{url}/metrics") as response:
        page = await response.text()
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or (head.startswith(name + "{") and "{" not in name):
                total += float(value)
    return total


class PositionTap:
    """Counts the position traffic the scheduler publishes: `Positions` messages (one per
    gateway per round) and their entries, and single `position` events (a job's first)."""

    def __init__(self) -> None:
        self.messages = 0
        self.entries = 0
        self.singles = 0
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self, amqp_url: str) -> None:
        self._connection = await aio_pika.connect_robust(amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "gw.*._lane.positions")
        await queue.bind(exchange, "gw.*.*.position")
        await queue.consume(self._take, no_ack=True)

    async def _take(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if (message.routing_key or "").endswith("._lane.positions"):
            self.messages += 1
            self.entries += len(orjson.loads(message.body).get("positions") or [])
        else:
            self.singles += 1

    def counts(self) -> tuple[int, int, int]:
        return self.messages, self.entries, self.singles

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


# -- one round --------------------------------------------------------------------------------


@dataclass
class Round:
    clients: int
    rate: float
    load_before: str
    load_after: str
    run_s: float
    backend_s: float
    errors: int
    error_examples: list[str]
    connected_ms: dict[str, float]
    # From the connection's accept to the headers: the gateway's own part.
    headers_after_connect_ms: dict[str, float]
    headers_ms: dict[str, float]
    first_position_ms: dict[str, float]
    first_queue_ms: dict[str, float]
    told_a_position: int
    within_100ms: int
    rose: int
    positions_seen: int
    position_messages: int
    position_entries: int
    position_singles: int
    provisional_told: float
    positions_held: float
    rss_before_mb: float
    rss_peak_mb: float
    rss_after_mb: float
    # CPU seconds each process used during the round (the gateway, the scheduler, this one).
    cpu_s: dict[str, float]
    # What the gateway still held after the round (all 0 when nothing per request stays).
    left: dict[str, float]
    gc_pauses: dict[str, float]  # the gateway's collections over the run: count and seconds
    # This process's event loop lag while the clients arrived (ms).
    bench_lag_ms: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.run_s / self.backend_s if self.backend_s else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "p50": round(percentile(ordered, 50), 1),
        "p90": round(percentile(ordered, 90), 1),
        "p99": round(percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
    }


async def crowd_round(
    stack: Stack, args: argparse.Namespace, tap: PositionTap, prompts: Prompts
) -> Round:
    gateway_pid = stack.services["gateway"].pid
    assert gateway_pid is not None
    load_before = loadavg()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=None)
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(_on_connected)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[tracing]
    ) as session:
        provisional_0 = await metric(
            session, stack.gateway_url, "corral_gateway_provisional_positions_total"
        )
        held_0 = await metric(session, stack.gateway_url, "corral_gateway_positions_held_total")
        taps_0 = tap.counts()
        rss_before = rss_mb(gateway_pid)
        peak = [rss_before]
        running = True

        async def sample_rss() -> None:
            while running:
                peak[0] = max(peak[0], rss_mb(gateway_pid))
                await asyncio.sleep(RSS_EVERY_S)

        pids = {
            "gateway": gateway_pid,
            "scheduler": stack.services["scheduler"].pid or 0,
            "bench": os.getpid(),
        }
        cpu_0 = {name: cpu_s(pid) for name, pid in pids.items()}
        sampler = asyncio.create_task(sample_rss())
        # This process's own event loop lag while clients arrive: its clocks time every
        # client, so a late wake-up here would be counted against the gateway.
        lags: list[float] = []

        async def sample_lag() -> None:
            while running:
                due = time.perf_counter() + LAG_EVERY_S
                await asyncio.sleep(LAG_EVERY_S)
                lags.append((time.perf_counter() - due) * 1e3)

        lagger = asyncio.create_task(sample_lag())
        clients = [Client() for _ in range(args.clients)]
        work = [prompts.next() for _ in clients]
        tasks: list[asyncio.Task[None]] = []
        started = time.perf_counter()
        for index, (client, (body, expected)) in enumerate(zip(clients, work, strict=True)):
            if args.rate > 0:
                due = started + index / args.rate
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            tasks.append(
                asyncio.create_task(one_client(session, stack.gateway_url, body, expected, client))
            )
        arrived_lags = list(lags)
        await asyncio.gather(*tasks)
        run_s = time.perf_counter() - started
        cpu = {name: round(cpu_s(pid) - cpu_0[name], 1) for name, pid in pids.items()}
        running = False
        await sampler
        await lagger
        load_after = loadavg()
        await asyncio.sleep(SETTLE_S)
        rss_after = rss_mb(gateway_pid)
        provisional = (
            await metric(session, stack.gateway_url, "corral_gateway_provisional_positions_total")
            - provisional_0
        )
        held = (
            await metric(session, stack.gateway_url, "corral_gateway_positions_held_total") - held_0
        )
        gc_pauses = {
            f"gen{generation} {what}": round(
                await metric(
                    session,
                    stack.gateway_url,
                    f'corral_gc_pause_seconds_{what}{{generation="{generation}"}}',
                ),
                3,
            )
            for generation in (1, 2)
            for what in ("count", "sum")
        }
        gc_pauses["gen2 over 0.1 s"] = gc_pauses["gen2 count"] - await metric(
            session, stack.gateway_url, 'corral_gc_pause_seconds_bucket{generation="2",le="0.1"}'
        )
        left = {
            name.removeprefix("corral_gateway_"): await metric(session, stack.gateway_url, name)
            for name in (
                'corral_gateway_held_requests{what="listening"}',
                'corral_gateway_held_requests{what="placed"}',
                "corral_gateway_in_flight_requests",
                "corral_gateway_open_connections",
            )
        }
    taps = tap.counts()
    errors = [c.error for c in clients if c.error]
    told = [c for c in clients if c.first_position_ms is not None]
    firsts = [c.first_position_ms for c in told if c.first_position_ms is not None]
    return Round(
        clients=args.clients,
        rate=args.rate,
        load_before=" ".join(load_before),
        load_after=" ".join(load_after),
        run_s=round(run_s, 2),
        backend_s=round(sum(c.backend_ns for c in clients) / 1e9, 2),
        errors=len(errors),
        error_examples=errors[:5],
        connected_ms=spread([c.connected_ms for c in clients if c.connected_ms is not None]),
        headers_after_connect_ms=spread(
            [
                c.headers_ms - c.connected_ms
                for c in clients
                if c.headers_ms is not None and c.connected_ms is not None
            ]
        ),
        headers_ms=spread([c.headers_ms for c in clients if c.headers_ms is not None]),
        first_position_ms=spread(firsts),
        first_queue_ms=spread([c.first_queue_ms for c in clients if c.first_queue_ms]),
        told_a_position=len(told),
        within_100ms=sum(1 for f in firsts if f <= 100),
        rose=sum(1 for c in clients if c.rises),
        positions_seen=sum(len(c.positions) for c in clients),
        position_messages=taps[0] - taps_0[0],
        position_entries=taps[1] - taps_0[1],
        position_singles=taps[2] - taps_0[2],
        provisional_told=provisional,
        positions_held=held,
        rss_before_mb=round(rss_before, 1),
        rss_peak_mb=round(peak[0], 1),
        rss_after_mb=round(rss_after, 1),
        cpu_s=cpu,
        left=left,
        gc_pauses=gc_pauses,
        bench_lag_ms=spread(arrived_lags),
        samples=[asdict(c) for c in clients] if args.samples else [],
    )


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    tap = PositionTap()
    await tap.start(stack.amqp_url)
    prompts = Prompts(args.tokens)
    try:
        # Warm up: the model loaded, the speeds measured, every code path taken once.
        warm = argparse.Namespace(**{**vars(args), "clients": 20, "rate": 0, "samples": False})
        await crowd_round(stack, warm, tap, prompts)
        rounds = []
        # The load generator holds 10,000 clients too: its own oldest-generation collections
        # (hundreds of ms) would be counted against the gateway. Kept out as the services keep
        # theirs out while busy (corral_common/gc_pauses.py); collected between rounds.
        with frozen_heap(hold_oldest=True):
            for number in range(args.rounds):
                log(f"round {number + 1}: {args.clients} clients at {args.rate or 'once'}/s")
                rounds.append(await crowd_round(stack, args, tap, prompts))
                log(render_round(rounds[-1]))
                gc.collect()
    finally:
        await tap.close()
    return {
        "environment": await environment(stack.amqp_url),
        "settings": {
            "clients": args.clients,
            "rate": args.rate,
            "tokens": args.tokens,
            "token_delay_ms": args.token_delay_ms,
            "admission_window": args.admission_window,
        },
        "rounds": [asdict(r) | {"ratio": round(r.ratio, 3)} for r in rounds],
    }


def render_round(r: Round) -> str:
    return "\n".join(
        [
            f"clients {r.clients} at {r.rate or 'once'}/s; load {r.load_before} -> "
            f"{r.load_after}; errors {r.errors} {r.error_examples[:2]}",
            f"  connected ms {r.connected_ms}",
            f"  headers after the connection ms {r.headers_after_connect_ms}",
            f"  headers ms {r.headers_ms}",
            f"  first position ms {r.first_position_ms} (told {r.told_a_position}, "
            f"within 100 ms {r.within_100ms})",
            f"  first queue chunk ms {r.first_queue_ms}",
            f"  positions seen {r.positions_seen}, clients whose position rose {r.rose}; "
            f"provisional told {r.provisional_told:.0f}, held {r.positions_held:.0f}",
            f"  run {r.run_s} s, backend work {r.backend_s} s, ratio {r.ratio:.3f}",
            f"  position traffic: {r.position_messages} Positions messages "
            f"({r.position_entries} entries), {r.position_singles} single position events",
            f"  gateway RSS MB before {r.rss_before_mb}, peak {r.rss_peak_mb}, "
            f"after {r.rss_after_mb}; CPU s {r.cpu_s}; left {r.left}",
            f"  gateway garbage collections (whole run) {r.gc_pauses}",
            f"  the benchmark's own loop lag while clients arrived ms {r.bench_lag_ms}",
        ]
    )


def render(result: dict[str, Any]) -> str:
    lines = [json.dumps(result["settings"])]
    for number, r in enumerate(result["rounds"], 1):
        lines.append(
            f"round {number}: " + json.dumps({k: v for k, v in r.items() if k != "samples"})
        )
    return "\n".join(lines)


# -- the scheduler's side, in process ---------------------------------------------------------


def lane_cost(sizes: Sequence[int], repeats: int = 5) -> str:
    from corral_common.messages import Job, Position
    from corral_scheduler.eta import SpeedBook
    from corral_scheduler.lane import Entry, Lane
    from corral_scheduler.positions import PositionBroadcaster
    from corral_scheduler.settings import SchedulerSettings

    class Sink:
        def __init__(self) -> None:
            self.messages = 0

        async def send_positions(self, gateway_id: str, positions: list[Position]) -> bool:
            self.messages += 1
            return True

    arrivals = itertools.count()

    def entry(request_id: str) -> Entry:
        job = Job(
            request_id=request_id,
            gateway_id="gw",
            kind="chat",
            model=MODEL,
            payload={"model": MODEL, "messages": []},
            enqueued_at=0.0,
            prompt_chars=60,
        )
        return Entry(
            job=job,
            delivery=None,
            connection_epoch=0,
            admitted_at=time.monotonic(),
            arrival=next(arrivals),
            estimate_ms=500,
        )

    async def one(size: int) -> tuple[float, float, float, float]:
        # Priced as the scheduler prices them (its speed book, with one model measured).
        speeds = SpeedBook.from_settings(SchedulerSettings())
        speeds.observe(MODEL, {"eval_count": 12, "eval_duration": 36_000_000})
        # Nothing runs: no server has asked for a job.
        lane = Lane(speeds=speeds)
        for index in range(size):
            lane.push(entry(f"r{index}"))
        snaps = []
        for _ in range(repeats):
            begun = time.perf_counter()
            lane.snapshot()
            snaps.append(time.perf_counter() - begun)
        broadcaster = PositionBroadcaster(lane, Sink(), 0.25)  # type: ignore[arg-type]
        rounds = []
        for _ in range(repeats):
            for waiting in lane:
                waiting.last_sent = None
            begun = time.perf_counter()
            await broadcaster.broadcast()
            rounds.append(time.perf_counter() - begun)
        # Admission's first answer: a job pushed behind the others and placed, with the lane
        # unchanged since its last snapshot (the next admission in a crowd), and right after a
        # change (the first admission after a job started, finished or was cancelled).
        behind, changed = [], []
        for index in range(repeats):
            begun = time.perf_counter()
            lane.push(pushed := entry(f"a{index}"))
            lane.placement(pushed.request_id)
            behind.append(time.perf_counter() - begun)
            lane.remove(pushed.request_id)
            begun = time.perf_counter()
            lane.push(pushed := entry(f"b{index}"))
            lane.placement(pushed.request_id)
            changed.append(time.perf_counter() - begun)
            lane.remove(pushed.request_id)
            lane.snapshot()
        return (
            statistics.median(snaps) * 1e3,
            statistics.median(rounds) * 1e3,
            statistics.median(behind) * 1e3,
            statistics.median(changed) * 1e3,
        )

    lines = [
        "lane size | snapshot ms | position round ms (every job told) | "
        "admission's first position ms: in a crowd / after a change"
    ]
    for size in sizes:
        gc.collect()
        snap_ms, round_ms, behind_ms, changed_ms = asyncio.run(one(size))
        lines.append(
            f"{size} | {snap_ms:.2f} | {round_ms:.2f} | {behind_ms:.3f} / {changed_ms:.2f}"
        )
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser("crowd.py", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="arrivals a second; 0: at once")
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("--token-delay-ms", type=float, default=3.0)
    parser.add_argument("--admission-window", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--samples", action="store_true", help="keep every client in --json")
    parser.add_argument("--lane-cost", type=positive_ints, help="only the scheduler's side")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="the services allocate with the C library's malloc (PYTHONMALLOC=malloc) instead "
        "of CPython's arenas, to see what of the gateway's memory comes back after the crowd",
    )
    parser.add_argument(
        "--no-model-manager",
        action="store_true",
        help="without it the gateway asks for the model list over the broker on every request",
    )
    args = parser.parse_args(argv)
    if args.lane_cost:
        print(lane_cost(args.lane_cost))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.clients + 1024
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log(f"the open-file limit is {hard}; {args.clients} clients need about {wanted}")
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, wanted * 2)), hard))

    def body(workdir: Path, cleanup: contextlib.ExitStack) -> dict[str, Any]:
        amqp_url, node = start_broker(cleanup, args.amqp_url)
        env = {
            "CORRAL_MAX_CONNECTIONS": str(args.clients + 1000),
            "CORRAL_MAX_CONNECTIONS_PER_IP": "0",
            "CORRAL_ADMISSION_WINDOW": str(args.admission_window),
            # Each client is its own caller's only job; no default queue timeout cuts a wait.
            "CORRAL_QUEUE_TIMEOUT_S": "0",
            "CORRAL_MAX_QUEUED_PER_KEY": "0",
            "CORRAL_QUEUE_MAX_LENGTH": str(2 * args.clients + 1000),
        }
        if args.system_malloc:
            env["PYTHONMALLOC"] = "malloc"
        knobs = {"token_delay_ms": args.token_delay_ms, "load_ms": 0, "prompt_ms_per_token": 0}
        stack = start_services(cleanup, workdir, amqp_url, node, knobs, env=env)
        if not args.no_model_manager:
            # As deployed: the gateway knows the backend's models from the model manager's
            # broadcast. Without it, every request asks for the list over the broker first.
            extra = Cluster(amqp_url, stack.emulator_url, workdir, env, log_level="warning")
            cleanup.callback(extra.stop_all)
            extra.start_health_service("corral_model_manager", "model-manager")
        return asyncio.run(measure(stack, args))

    def verdict(result: dict[str, Any]) -> str | None:
        # A failed client fails the run, which keeps the services' logs.
        failed = sum(r["errors"] for r in result["rounds"])
        return f"{failed} clients failed" if failed else None

    return run_bench(args, body, render, lambda result: result, verdict)


if __name__ == "__main__":
    sys.exit(main())
