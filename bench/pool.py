"""Scale-out over a pool of backend servers: throughput and model swaps with 1, 2 and 4
emulated servers under a mixed-model load, the scheduler's affinity ordering against a naive
round robin.

    uv run python bench/pool.py
        [--configs 1:affinity,2:affinity,2:round_robin,4:affinity,4:round_robin] [--clients 24]
        [--requests 8] [--models llama3.2,qwen2.5:0.5b,qwen3:0.6b]
        [--shares 0.5,0.3,0.2] [--num-predict 30,60] [--token-delay-ms 6] [--load-ms 500]
        [--prompt-ms-per-token 0.5] [--keep-alive-s 0.15] [--env NAME=VALUE ...] [--seed 7]
        [--amqp-url URL] [--json OUT]

One throwaway RabbitMQ node for the run (see bench/harness.py); for each configuration a fresh
set of N emulator processes, one scheduler with `CORRAL_BACKENDS` listing them and
`CORRAL_POOL_POLICY` set, and one gateway. Every configuration gets the same seeded load: each
of `--clients` closed-loop clients (its own `X-Client-Id`) sends `--requests` streaming
/api/chat requests one after another, each for one of the models (by `--shares`) with a
`num_predict` cap that the reply always reaches. Every answer is checked against
`corral_emulator.expected_reply`.

A swap has to cost what it costs on a GPU with room for one model: the emulator keeps every
model it has loaded until its keep_alive runs out (Ollama's 5 min by default), so its default
keep_alive is set to `--keep-alive-s` (0.15 s): longer than the gap between two jobs on one
server, shorter than any job. A model another model's job ran after has therefore been unloaded
by then, and coming back to it is a real load (`--load-ms`); consecutive jobs for one model
reuse it. The table shows the loads that neither a swap nor a server's first load explains
(expected 0).

Per configuration: wall time, jobs/s and its ratio to the 1-server run, model loads (the
emulators' own count), swaps per server (the scheduler's
`corral_backend_server_model_swaps_total`), p50/p95 end to end (request sent to `done`), each
emulator's `max_active` (the per-server serial invariant: anything but 1 fails the run), jobs
per server, how often a server sat idle while jobs waited (the scheduler's /metrics sampled
every `--sample-ms`: `corral_queue_depth` > 0 while `corral_backend_server_busy` is 0), and how
many swap loads were of a model another server held at that moment (the emulators' loaded
models, sampled with it).
Method and results: docs/performance.md, "Backend pools".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import harness
import orjson

from corral_emulator import EmulatorControl, expected_reply

POLICIES = ("affinity", "round_robin")
DEFAULT_CONFIGS = "1:affinity,2:affinity,2:round_robin,4:affinity,4:round_robin"
VOCABULARY = (
    *("a", "pool", "of", "servers", "runs", "one", "model", "at", "time", "and", "each"),
    *("request", "waits", "for", "its", "turn", "in", "the", "queue", "tokens", "stream"),
)
# An idle server while jobs wait, in more than this share of the samples with jobs waiting,
# is reported: between two jobs a server is legitimately idle for a few milliseconds.
IDLE_WARN_SHARE = 0.05
_SAMPLE = re.compile(r'^(corral_[a-z_]+)(?:\{server="([^"]*)"\})? ([0-9.eE+-]+|NaN)$', re.M)


# -- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    client: int
    index: int
    model: str
    num_predict: int
    prompt: str

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": self.prompt}],
                "stream": True,
                # qwen3 thinks unless told not to; every reply is the plain echo.
                "think": False,
                "options": {"num_predict": self.num_predict},
            }
        )

    @property
    def expected(self) -> str:
        return expected_reply(self.prompt, self.num_predict)


def plan_load(args: argparse.Namespace) -> list[list[Request]]:
    """Each client's requests in the order it sends them; the same for every configuration."""
    rng = random.Random(args.seed)
    low, high = args.num_predict
    clients = []
    for client in range(args.clients):
        requests = []
        for index in range(args.requests):
            model = rng.choices(args.models, weights=args.shares)[0]
            cap = rng.randint(low, high)
            # Longer than the cap, so the echo always runs to `num_predict` tokens.
            words = [f"c{client}r{index}", *rng.choices(VOCABULARY, k=high + 10)]
            requests.append(Request(client, index, model, cap, " ".join(words)))
        clients.append(requests)
    return clients


@dataclass(frozen=True)
class Config:
    servers: int
    policy: str

    @property
    def label(self) -> str:
        return f"{self.servers}:{self.policy}"

    @property
    def names(self) -> list[str]:
        return [f"s{i}" for i in range(1, self.servers + 1)]


# -- what is measured -------------------------------------------------------------------------


@dataclass
class ServerResult:
    name: str
    # The scheduler's count (`corral_backend_server_jobs_total`) and the emulator's.
    jobs: int
    completed: int
    # The scheduler's `corral_backend_server_model_swaps_total`: its model changed.
    swaps: int
    # The emulator's loads (a swap, the server's first model, or a reload after keep_alive).
    loads: int
    max_active: int
    # Shares of the /metrics samples: running a job; idle while jobs waited (of the samples
    # with jobs waiting).
    busy_share: float
    idle_while_waiting: float


@dataclass
class ConfigResult:
    servers: int
    policy: str
    jobs: int
    wall_s: float
    jobs_per_s: float
    p50_s: float
    p95_s: float
    max_s: float
    per_server: list[ServerResult]
    samples: int
    samples_waiting: int
    swap_loads_seen: int
    swap_loads_held_elsewhere: int
    load_average_before: float
    load_average_after: float
    latencies_s: list[float] = field(repr=False)

    @property
    def label(self) -> str:
        return f"{self.servers}:{self.policy}"

    @property
    def loads(self) -> int:
        return sum(s.loads for s in self.per_server)

    @property
    def swaps(self) -> int:
        return sum(s.swaps for s in self.per_server)

    @property
    def unexplained_loads(self) -> int:
        """Loads neither a swap nor a server's first load accounts for: a model unloaded by
        keep_alive between two of its own jobs."""
        used = sum(1 for s in self.per_server if s.completed)
        return self.loads - self.swaps - used


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    results: list[ConfigResult]
    # The serial invariant broken, or a server never used: the run fails.
    violations: list[str]
    # Worth a look, not fatal (idle servers while jobs waited, counts that disagree, affinity
    # swapping more than round robin).
    anomalies: list[str]


# -- one configuration ------------------------------------------------------------------------


async def one_request(session: aiohttp.ClientSession, url: str, request: Request) -> float:
    headers = {
        "Content-Type": "application/json",
        "X-Client-Id": f"client-{request.client:02d}",
        "X-Queue-Progress": "0",
    }
    started = time.perf_counter()
    parts: list[str] = []
    done = False
    async with session.post(url, data=request.body(), headers=headers) as response:
        if response.status != 200:
            raise harness.BenchError(
                f"request c{request.client}r{request.index} answered {response.status}: "
                f"{(await response.text())[:300]}"
            )
        async for line in response.content:
            if not line.strip():
                continue
            chunk = orjson.loads(line)
            if "error" in chunk:
                raise harness.BenchError(f"c{request.client}r{request.index}: {chunk['error']}")
            done = done or bool(chunk.get("done"))
            parts.append(str((chunk.get("message") or {}).get("content") or ""))
    elapsed = time.perf_counter() - started
    if not done:
        raise harness.BenchError(f"c{request.client}r{request.index}: the stream ended early")
    if "".join(parts) != request.expected:
        raise harness.BenchError(
            f"c{request.client}r{request.index} ({request.model}): unexpected answer "
            f"{''.join(parts)[:80]!r}"
        )
    return elapsed


def scheduler_samples(text: str) -> dict[tuple[str, str], float]:
    """(metric, server label or "") -> value, for the unlabelled and server-labelled
    `corral_*` samples of a /metrics page."""
    return {(m[1], m[2] or ""): float(m[3]) for m in _SAMPLE.finditer(text)}


@dataclass
class LaneSamples:
    total: int = 0
    waiting: int = 0
    busy: dict[str, int] = field(default_factory=dict)
    idle_while_waiting: dict[str, int] = field(default_factory=dict)
    # Swap loads seen on the emulators (a load after the server's first), and those of a model
    # another server held at that moment (it could have run the job instead of a load here).
    swap_loads_seen: int = 0
    swap_loads_held_elsewhere: int = 0
    # Each emulator's `loads` and `loaded` at the last sample.
    loads: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, set[str]] = field(default_factory=dict)

    def lane(self, values: dict[tuple[str, str], float], names: Sequence[str]) -> None:
        depth = values.get(("corral_queue_depth", ""), 0.0)
        self.total += 1
        self.waiting += depth > 0
        for name in names:
            busy = values.get(("corral_backend_server_busy", name), 0.0) > 0
            in_rotation = values.get(("corral_backend_server_in_rotation", name), 1.0) > 0
            self.busy[name] = self.busy.get(name, 0) + busy
            self.idle_while_waiting[name] = self.idle_while_waiting.get(name, 0) + (
                depth > 0 and not busy and in_rotation
            )

    def emulators(self, stats: dict[str, dict[str, Any]]) -> None:
        """A load shows in `loaded` for its whole `--load-ms`, so sampling more often than
        that sees each one."""
        now = {name: set(s.get("loaded") or ()) for name, s in stats.items()}
        for name, s in stats.items():
            before = self.loads.get(name, 0)
            loads = int(s.get("loads", 0))
            if loads > before and before > 0:
                for model in now[name] - self.loaded.get(name, set()):
                    self.swap_loads_seen += 1
                    elsewhere = any(
                        model in now[other] or model in self.loaded.get(other, set())
                        for other in stats
                        if other != name
                    )
                    self.swap_loads_held_elsewhere += elsewhere
            self.loads[name] = loads
        self.loaded = now


async def sample_lane(
    session: aiohttp.ClientSession,
    scheduler_url: str,
    controls: dict[str, EmulatorControl],
    stop: asyncio.Event,
    interval_s: float,
) -> LaneSamples:
    """The scheduler's queue depth and per-server busy gauges, and what each emulator holds,
    every `interval_s`."""
    seen = LaneSamples()
    names = list(controls)

    async def metrics() -> dict[tuple[str, str], float]:
        async with session.get(f"{scheduler_url}/metrics") as response:
            return scheduler_samples(await response.text())

    while not stop.is_set():
        values, *stats = await asyncio.gather(metrics(), *(c.stats() for c in controls.values()))
        seen.lane(values, names)
        seen.emulators(dict(zip(names, stats, strict=True)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
    return seen


async def measure(
    args: argparse.Namespace, config: Config, load: list[list[Request]], stack: harness.Stack
) -> ConfigResult:
    sent = sum(len(requests) for requests in load)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        controls = {n: EmulatorControl(u, session) for n, u in stack.emulator_urls.items()}
        for control in controls.values():
            await control.reset()
            await control.configure(default_keep_alive_s=args.keep_alive_s)
        load_before = os.getloadavg()[0]
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            sample_lane(session, stack.scheduler_url, controls, stop, args.sample_s)
        )
        url = f"{stack.gateway_url}/api/chat"
        latencies: list[float] = []

        async def client(requests: list[Request]) -> None:
            for request in requests:
                latencies.append(await one_request(session, url, request))

        harness.log(f"{config.label}: {args.clients} clients, {sent} requests")
        started = time.perf_counter()
        try:
            await asyncio.gather(*(client(requests) for requests in load))
        finally:
            wall = time.perf_counter() - started
            stop.set()
            seen = await sampler
        load_after = os.getloadavg()[0]
        # The scheduler counts a job once its final event is out, just after the client's
        # `done`: let the last one land.
        await asyncio.sleep(0.5)
        async with session.get(f"{stack.scheduler_url}/metrics") as response:
            values = scheduler_samples(await response.text())
        stats = {name: await control.stats() for name, control in controls.items()}
    completed = sum(int(s.get("completed", 0)) for s in stats.values())
    if completed != sent:
        raise harness.BenchError(
            f"{config.label}: the emulators completed {completed} generations, expected {sent}: "
            "is another scheduler consuming this broker's jobs queue?"
        )
    waiting = max(seen.waiting, 1)
    ordered = sorted(latencies)
    return ConfigResult(
        servers=config.servers,
        policy=config.policy,
        jobs=sent,
        wall_s=wall,
        jobs_per_s=sent / wall,
        p50_s=harness.percentile(ordered, 50),
        p95_s=harness.percentile(ordered, 95),
        max_s=ordered[-1],
        per_server=[
            ServerResult(
                name=name,
                jobs=int(values.get(("corral_backend_server_jobs_total", name), 0)),
                completed=int(stats[name].get("completed", 0)),
                swaps=int(values.get(("corral_backend_server_model_swaps_total", name), 0)),
                loads=int(stats[name].get("loads", 0)),
                max_active=int(stats[name].get("max_active", 0)),
                busy_share=seen.busy.get(name, 0) / max(seen.total, 1),
                idle_while_waiting=seen.idle_while_waiting.get(name, 0) / waiting,
            )
            for name in config.names
        ],
        samples=seen.total,
        samples_waiting=seen.waiting,
        swap_loads_seen=seen.swap_loads_seen,
        swap_loads_held_elsewhere=seen.swap_loads_held_elsewhere,
        load_average_before=load_before,
        load_average_after=load_after,
        latencies_s=latencies,
    )


# -- the run ----------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, workdir: Path, cleanup: contextlib.ExitStack) -> Report:
    load = plan_load(args)
    knobs = {
        "token_delay_ms": args.token_delay_ms,
        "prompt_ms_per_token": args.prompt_ms_per_token,
        "load_ms": args.load_ms,
    }
    amqp_url, node = harness.start_broker(cleanup, args.amqp_url)
    results: list[ConfigResult] = []
    for config in args.configs:
        # Fresh emulators, scheduler and gateway for each; the broker's queues are empty
        # between configurations (every job of the last one was answered and acked).
        with contextlib.ExitStack() as services:
            stack = harness.start_services(
                services,
                workdir / config.label.replace(":", "-"),
                amqp_url,
                node,
                knobs,
                servers=config.names,
                env={**args.service_env, "CORRAL_POOL_POLICY": config.policy},
            )
            result = asyncio.run(measure(args, config, load, stack))
        harness.log(
            f"{config.label}: {result.wall_s:.1f} s, {result.jobs_per_s:.2f} jobs/s, "
            f"{result.loads} loads, {result.swaps} swaps"
        )
        results.append(result)
    environment = asyncio.run(harness.environment(amqp_url))
    violations, anomalies = judge(results, args.clients)
    return Report(config_of(args), environment, results, violations, anomalies)


def judge(results: Sequence[ConfigResult], clients: int) -> tuple[list[str], list[str]]:
    violations: list[str] = []
    anomalies: list[str] = []
    for r in results:
        for s in r.per_server:
            if s.max_active > 1:
                violations.append(
                    f"{r.label}: server {s.name} ran {s.max_active} generations at once"
                )
            elif s.max_active == 0:
                # With more clients than servers, jobs always waited: a server left unused
                # is the scheduler's fault. With fewer, it may simply not have been needed.
                found = violations if clients > r.servers else anomalies
                found.append(f"{r.label}: server {s.name} never ran a job")
            if s.jobs != s.completed:
                anomalies.append(
                    f"{r.label}: server {s.name}: the scheduler counts {s.jobs} jobs, "
                    f"its emulator completed {s.completed}"
                )
            if r.samples_waiting and s.idle_while_waiting > IDLE_WARN_SHARE:
                anomalies.append(
                    f"{r.label}: server {s.name} was idle in {s.idle_while_waiting:.0%} of the "
                    f"{r.samples_waiting} samples in which jobs waited"
                )
        if r.unexplained_loads > 0:
            anomalies.append(
                f"{r.label}: {r.unexplained_loads} loads beyond the swaps and first loads "
                "(a model unloaded by keep_alive between two of its own jobs)"
            )
    by_key = {(r.servers, r.policy): r for r in results}
    for (servers, policy), r in by_key.items():
        naive = by_key.get((servers, "round_robin"))
        if policy == "affinity" and naive is not None and r.swaps > naive.swaps:
            anomalies.append(
                f"{servers} servers: affinity swapped {r.swaps} times, round robin {naive.swaps}"
            )
    return violations, anomalies


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "configs": [c.label for c in args.configs],
        "clients": args.clients,
        "requests_per_client": args.requests,
        "models": list(args.models),
        "shares": list(args.shares),
        "num_predict": list(args.num_predict),
        "token_delay_ms": args.token_delay_ms,
        "prompt_ms_per_token": args.prompt_ms_per_token,
        "load_ms": args.load_ms,
        "keep_alive_s": args.keep_alive_s,
        "sample_ms": args.sample_s * 1e3,
        "seed": args.seed,
        "service_env": args.service_env,
        "broker": "external" if args.amqp_url else "throwaway node, shared by the configurations",
    }


# -- output -----------------------------------------------------------------------------------


def baseline(results: Sequence[ConfigResult]) -> ConfigResult | None:
    """The 1-server run the others are scaled against (affinity if there are two)."""
    ones = [r for r in results if r.servers == 1]
    return next((r for r in ones if r.policy == "affinity"), ones[0] if ones else None)


def markdown(report: Report) -> str:
    cfg, env = report.config, report.environment
    base = baseline(report.results)
    shares = ", ".join(
        f"{model} {share:g}" for model, share in zip(cfg["models"], cfg["shares"], strict=True)
    )
    lines = [
        f"Commit {env.get('commit')}, {env.get('cpus')} CPUs, Python {env.get('python')}, "
        f"RabbitMQ {env.get('rabbitmq', '?')}. {cfg['clients']} closed-loop clients x "
        f"{cfg['requests_per_client']} streaming chats each; models {shares}; num_predict "
        f"{cfg['num_predict'][0]}-{cfg['num_predict'][1]} (always reached); token delay "
        f"{cfg['token_delay_ms']:g} ms, prompt {cfg['prompt_ms_per_token']:g} ms/token, load "
        f"{cfg['load_ms']:g} ms, emulator keep_alive {cfg['keep_alive_s']:g} s; seed "
        f"{cfg['seed']}." + "".join(f" `{k}={v}`." for k, v in cfg["service_env"].items()),
        "",
        "| servers | policy | wall (s) | jobs/s | x 1 server | model loads | swaps: total "
        "(per server) | swapped to a model held elsewhere | p50 (s) | p95 (s) | max_active "
        "| jobs per server | idle while jobs waited | load avg |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | --- "
        "| ---: |",
    ]
    for r in report.results:
        scaling = f"{r.jobs_per_s / base.jobs_per_s:.2f}" if base else "-"
        per = r.per_server
        lines.append(
            f"| {r.servers} | {r.policy} | {r.wall_s:.1f} | {r.jobs_per_s:.2f} | {scaling} "
            f"| {r.loads} ({r.unexplained_loads:+d}) "
            f"| {r.swaps} ({'/'.join(str(s.swaps) for s in per)}) "
            f"| {r.swap_loads_held_elsewhere} of {r.swap_loads_seen} "
            f"| {r.p50_s:.2f} | {r.p95_s:.2f} "
            f"| {'/'.join(str(s.max_active) for s in per)} "
            f"| {'/'.join(str(s.completed) for s in per)} "
            f"| {'/'.join(f'{s.idle_while_waiting:.0%}' for s in per)} "
            f"| {r.load_average_before:.1f}-{r.load_average_after:.1f} |"
        )
    lines += [
        "",
        "Model loads: the emulators' own count; in brackets the loads neither a swap nor a "
        "server's first load explains (0 when a swap is a reload and nothing else is). Swaps: "
        "the scheduler's `corral_backend_server_model_swaps_total`. Swapped to a model held "
        "elsewhere: of the swap loads the sampling saw on the emulators, those of a model "
        "another server held at that moment. Latency: request sent to "
        "`done`. max_active: each emulator's most generations at once (must be 1). Idle while "
        "jobs waited: share of the /metrics samples with jobs waiting in which the server ran "
        "nothing. Load avg: the machine's 1-minute load average before and after.",
    ]
    if report.violations or report.anomalies:
        lines += ["", "Found:"]
        lines += [f"- VIOLATION: {text}" for text in report.violations]
        lines += [f"- {text}" for text in report.anomalies]
    return "\n".join(lines)


def report_json(report: Report) -> dict[str, Any]:
    body = asdict(report)
    for raw, result in zip(body["results"], report.results, strict=True):
        raw["loads"] = result.loads
        raw["swaps"] = result.swaps
        raw["unexplained_loads"] = result.unexplained_loads
    return body


def verdict(report: Report) -> str | None:
    if report.violations:
        return "per-server invariant broken: " + "; ".join(report.violations)
    return None


# -- command line -----------------------------------------------------------------------------


def parse_configs(text: str) -> list[Config]:
    configs = []
    for part in text.split(","):
        servers, _, policy = part.strip().partition(":")
        policy = policy or "affinity"
        if not servers.isdigit() or int(servers) < 1 or policy not in POLICIES:
            raise argparse.ArgumentTypeError(
                f"expected servers:policy entries like 2:affinity,2:round_robin, not {part!r}"
            )
        configs.append(Config(int(servers), policy))
    return configs


def floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.5,0.3, not {text!r}") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.argument_parser(
        "bench/pool.py",
        "Throughput and model swaps over 1, 2 and 4 emulated backend servers, affinity "
        "against round robin.",
    )
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=parse_configs(DEFAULT_CONFIGS),
        help=f"servers:policy, run in this order (default {DEFAULT_CONFIGS})",
    )
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients (default 24)")
    parser.add_argument(
        "--requests", type=int, default=8, help="requests per client, one after another (8)"
    )
    parser.add_argument(
        "--models",
        type=lambda text: [m.strip() for m in text.split(",") if m.strip()],
        default=["llama3.2", "qwen2.5:0.5b", "qwen3:0.6b"],
        help="models of the emulator's catalogue (default llama3.2,qwen2.5:0.5b,qwen3:0.6b)",
    )
    parser.add_argument(
        "--shares", type=floats, default=[0.5, 0.3, 0.2], help="each model's share (0.5,0.3,0.2)"
    )
    parser.add_argument(
        "--num-predict",
        type=harness.positive_ints,
        default=[30, 60],
        help="lowest,highest num_predict, uniform (default 30,60)",
    )
    parser.add_argument("--token-delay-ms", type=float, default=6.0)
    parser.add_argument("--prompt-ms-per-token", type=float, default=0.5)
    parser.add_argument("--load-ms", type=float, default=500.0)
    parser.add_argument(
        "--keep-alive-s",
        type=float,
        default=0.15,
        help="the emulators' default keep_alive: above the gap between two jobs on a server, "
        "below the shortest job, so each server in effect holds one model (default 0.15)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the scheduler and gateway of every configuration, e.g. "
        "CORRAL_GROUP_BOUND=4 (repeatable)",
    )
    parser.add_argument(
        "--sample-ms", type=float, default=200.0, help="the scheduler's /metrics sampling (200)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        parser.error("--clients and --requests must be positive")
    if len(args.shares) != len(args.models) or min(args.shares) < 0 or sum(args.shares) <= 0:
        parser.error("--shares needs one non-negative share per model")
    if len(args.num_predict) != 2 or args.num_predict[0] > args.num_predict[1]:
        parser.error("--num-predict is lowest,highest")
    if min(args.token_delay_ms, args.prompt_ms_per_token, args.load_ms) < 0:
        parser.error("times must not be negative")
    if args.keep_alive_s <= 0 or not 0 < args.sample_ms < args.load_ms:
        parser.error(
            "--keep-alive-s must be positive, --sample-ms positive and below --load-ms "
            "(to see every load)"
        )
    shortest_job_s = args.num_predict[0] * args.token_delay_ms / 1e3
    if args.keep_alive_s >= shortest_job_s:
        parser.error(
            f"--keep-alive-s {args.keep_alive_s:g} must be below the shortest job "
            f"({shortest_job_s:g} s), or a swap back to a model may find it still loaded"
        )
    args.sample_s = args.sample_ms / 1e3
    try:
        args.service_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error("--env takes NAME=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return harness.run_bench(
        args,
        lambda workdir, cleanup: run_all(args, workdir, cleanup),
        markdown,
        report_json,
        verdict,
    )


if __name__ == "__main__":
    sys.exit(main())
