"""Corral side by side with calling the backend directly, and with LiteLLM's proxy, in one run.

    uv run python bench/compare.py [--clients 1,16] [--requests N] [--repeats R] [--tokens T]
        [--token-delay-ms D] [--turns N] [--think-ms MS] [--corral default|bare]
        [--litellm PATH | --no-litellm]
        [--plots DIR | --no-plots] [--count-requests N] [--amqp-url URL] [--json OUT]
    uv run python bench/compare.py --replot OUT [DIR]    # plots and tables again from a --json

Starts everything it needs on this machine: a throwaway RabbitMQ node (unless --amqp-url), the
Ollama emulator as the one backend, and Corral as `make run` starts it (scheduler, session store
on its own SecantusDB, gateway; log level info); with `--corral bare`, only a scheduler and a
gateway at log level warning, as bench/latency.py measures. When LiteLLM's proxy is installed
(`make bench-install`, into bench/litellm/.venv), it runs too, in front of the same emulator.

Then the same streaming chats go, batch by batch in a rotating order, to:

- native surface (`POST /api/chat`, NDJSON): the emulator directly, and Corral;
- OpenAI surface (`POST /v1/chat/completions`, SSE): the emulator directly, Corral and LiteLLM.

Each client holds conversations of `--turns` turns. Corral keeps the history itself (the
request names its session in `X-Session-Id` and carries only the new message); the direct and
LiteLLM clients send the whole history, as they must. The backend sees the same messages either
way. A client sends its next turn the moment the answer ends, unless `--think-ms` gives it a
pause first, as a person or a program reading the answer takes: with sessions, a turn sent at
once waits at the gateway for the previous turn's write (docs/session-store.md).

Corral's queue feedback is on (its default): the first token is the first non-empty content,
so queue chunks (NDJSON) and comments (SSE) never count as one.

The backend runs one generation at a time, like Ollama. Corral queues; for the sides that do
not, the clients share one lock per side around each request and the time spent waiting for it
counts, as time in Corral's queue does.

Reported per side: TTFT and total time (p50, p99), the time added over the direct side of the
same surface, CPU time per request of every process taking part (RabbitMQ's included, from
/proc/<pid>/task/*/schedstat, read between batches) and RabbitMQ messages per request. Writes a
markdown report to stdout and two plots (PNG, needs matplotlib: `make bench-install`). Linux
only. Method and results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from harness import (
    LOOPBACK,
    BenchError,
    Stack,
    argument_parser,
    check_backend_record,
    environment,
    log,
    positive_ints,
    run_bench,
    start_broker,
    start_services,
)
from latency import CpuMeter, Summary

from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceProcess
from corral_emulator import EmulatorControl, expected_reply, reply_tokens

MODEL = "llama3.2"
REPO = Path(__file__).resolve().parent.parent
# Requests a minute per address on the `make run` side: counted, never reached.
BENCH_RATE_LIMIT = 1_000_000_000
# Where `make bench-install` puts LiteLLM's proxy (bench/litellm: an environment of its own).
LITELLM_DEFAULT = REPO / "bench" / "litellm" / ".venv" / "bin" / "litellm"
LITELLM_KEY = "sk-corral-bench-" + secrets.token_hex(16)
PLOT_DIR = REPO / "docs" / "img"
# One client switches sides every 10 requests; with 16 clients, 5 each (80 a batch).
BATCH_REQUESTS = 80
MAX_BATCH_PER_CLIENT = 10

Surface = Literal["native", "openai"]


# -- the sides --------------------------------------------------------------------------------


@dataclass
class Side:
    surface: Surface
    name: str
    url: str
    headers: dict[str, str]
    # Corral keeps the conversation: the request carries its session and the new message only.
    keeps_history: bool = False
    # Sides without a queue of their own: one request at a time, as Ollama serves them.
    lock: asyncio.Lock | None = None

    @property
    def label(self) -> str:
        return f"{self.surface}/{self.name}"


@dataclass
class Conversation:
    """One client's conversation on one side: turns so far, the history, its session id."""

    prefix: str
    turns_per_conversation: int
    index: int = 0
    turns: int = 0
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return f"{self.prefix}-{self.index}"

    def next_turn(self) -> None:
        self.turns += 1
        if self.turns >= self.turns_per_conversation:
            self.index += 1
            self.turns = 0
            self.history = []


class Prompts:
    """Distinct prompts whose replies are exactly `tokens` tokens ("Echo:" plus one per word)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._ids = itertools.count()

    def next(self) -> tuple[str, str]:
        prompt = " ".join([f"q{next(self._ids)}", *["word"] * (self.tokens - 2)])
        if len(reply_tokens(prompt)) != self.tokens:
            raise BenchError(f"prompt {prompt!r} does not yield {self.tokens} tokens")
        return prompt, expected_reply(prompt)


@dataclass(frozen=True)
class Sample:
    ttft_ms: float
    total_ms: float


async def request_once(
    session: aiohttp.ClientSession,
    side: Side,
    conversation: Conversation,
    prompts: Prompts,
    sessions_on: bool,
) -> Sample:
    prompt, expected = prompts.next()
    message = {"role": "user", "content": prompt}
    headers = dict(side.headers)
    if sessions_on and side.keeps_history:
        headers["X-Session-Id"] = conversation.session_id
        messages = [message]
    else:
        messages = [*conversation.history, message]
    body = orjson.dumps({"model": MODEL, "messages": messages, "stream": True})
    # From the moment the client wants to send: waiting for the lock (or in Corral's queue)
    # is latency on every side.
    wanted = time.perf_counter()
    if side.lock is None:
        sample = await _exchange(session, side, body, headers, expected, wanted)
    else:
        async with side.lock:
            sample = await _exchange(session, side, body, headers, expected, wanted)
    conversation.history += [message, {"role": "assistant", "content": expected}]
    conversation.next_turn()
    return sample


async def _exchange(
    session: aiohttp.ClientSession,
    side: Side,
    body: bytes,
    headers: dict[str, str],
    expected: str,
    wanted: float,
) -> Sample:
    first: float | None = None
    done: float | None = None
    text: list[str] = []
    parse = _native_line if side.surface == "native" else _sse_line
    async with session.post(side.url, data=body, headers=headers) as response:
        if response.status != 200:
            detail = (await response.text())[:300]
            raise BenchError(f"{side.label}: HTTP {response.status}: {detail}")
        # To the end of the body, so the keep-alive connection is reused.
        async for line in response.content:
            now = time.perf_counter()
            content, finished = parse(side, line)
            if content and first is None:
                first = now
            if content:
                text.append(content)
            if finished and done is None:
                done = now
    if first is None or done is None:
        raise BenchError(f"{side.label}: stream ended without a token or without its end")
    if "".join(text) != expected:
        raise BenchError(f"{side.label}: answer {''.join(text)!r} is not {expected!r}")
    return Sample((first - wanted) * 1e3, (done - wanted) * 1e3)


def _native_line(side: Side, line: bytes) -> tuple[str, bool]:
    """An NDJSON line: its content and whether it is the `done` line."""
    if not line.strip():
        return "", False
    chunk: dict[str, Any] = orjson.loads(line)
    if "error" in chunk:
        raise BenchError(f"{side.label}: error line in stream: {chunk['error']}")
    content = (chunk.get("message") or {}).get("content") or ""
    return str(content), bool(chunk.get("done"))


def _sse_line(side: Side, line: bytes) -> tuple[str, bool]:
    """An SSE line: its content and whether it is `data: [DONE]`. Comments (Corral's queue
    feedback and heartbeats) and blank lines carry nothing."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return "", False
    data = line[5:].strip()
    if data == b"[DONE]":
        return "", True
    chunk: dict[str, Any] = orjson.loads(data)
    if "error" in chunk:
        raise BenchError(f"{side.label}: error event in stream: {chunk['error']}")
    choices = chunk.get("choices") or [{}]
    content = (choices[0].get("delta") or {}).get("content") or ""
    return str(content), False


# -- meters -----------------------------------------------------------------------------------


def broker_counters(stack: Stack) -> Any:
    """bench/broker_counts.py's reader of our throwaway node's message counters; None (and the
    broker columns left out) when the module or the node is not there."""
    if stack.node is None:
        log("an external broker (--amqp-url): no broker message counts")
        return None
    try:
        module = importlib.import_module("broker_counts")
    except ImportError:
        log("bench/broker_counts.py not found: no broker message counts")
        return None
    return module.BrokerCounters.for_node(stack.node)


async def count_messages(
    counters: Any,
    background: Mapping[str, float],
    side: Side,
    clients: int,
    requests: int,
    prompts: Prompts,
    sessions_on: bool,
    turns: int,
    run_id: str,
) -> dict[str, float]:
    """RabbitMQ's messages per request on `side`: its node-wide counters read before and after
    `requests` requests from `clients` clients, less the node's background traffic (status
    broadcasts) over that span. Outside the timed batches: a read runs `rabbitmqctl`."""
    per_client = max(1, math.ceil(requests / clients))
    https = [aiohttp.ClientSession() for _ in range(clients)]
    talks = [Conversation(f"{run_id}-count-{n}", turns) for n in range(clients)]
    try:
        before = await counters.read()

        async def client(n: int) -> None:
            for _ in range(per_client):
                await request_once(https[n], side, talks[n], prompts, sessions_on)

        await asyncio.gather(*(client(n) for n in range(clients)))
        used = (await counters.read() - before).without(background)
    finally:
        for http in https:
            await http.close()
    return {
        name: value
        for name, value in used.per_request(clients * per_client).items()
        if name in BROKER_COUNTERS
    }


# Shown per request: messages in (publishes) and out (deliveries to consumers).
BROKER_COUNTERS = ("published", "delivered")


# -- a phase: one client count ----------------------------------------------------------------


@dataclass
class SideResult:
    requests: int
    elapsed_s: float
    ttft_ms: Summary
    total_ms: Summary
    cpu_ms_per_request: dict[str, float]
    # RabbitMQ's published and delivered messages per request (counted apart from the timed
    # batches); empty when not counted.
    broker_per_request: dict[str, float] = field(default_factory=dict)


@dataclass
class PhaseResult:
    clients: int
    requests_per_side: int
    sides: dict[str, SideResult]
    samples: dict[str, list[Sample]] = field(repr=False)


def batch_size(clients: int, per_client: int) -> int:
    batch = min(MAX_BATCH_PER_CLIENT, max(1, math.ceil(BATCH_REQUESTS / clients)))
    # At least two batches a side, so the order rotates even in short runs.
    return max(1, min(batch, math.ceil(per_client / 2)))


async def run_phase(
    clients: int,
    requests: int,
    warmup: int,
    sides: list[Side],
    prompts: Prompts,
    args: argparse.Namespace,
    cpu: CpuMeter,
    run_id: str,
) -> PhaseResult:
    per_client = max(1, math.ceil(requests / clients))
    batch = batch_size(clients, per_client)
    sessions_on = args.sessions == "on"
    log(
        f"{clients} client(s): {per_client} requests each per side on {len(sides)} sides, "
        f"batches of {batch}"
    )
    # One HTTP session per client (its keep-alive connections), one conversation per client
    # and side.
    https = [aiohttp.ClientSession() for _ in range(clients)]
    talks = {
        side.label: [
            Conversation(f"{run_id}-{clients}-{n}-{side.surface}", args.turns)
            for n in range(clients)
        ]
        for side in sides
    }

    async def batch_of(side: Side, count: int, out: list[Sample] | None) -> float:
        async def client(n: int) -> list[Sample]:
            talk = talks[side.label][n]
            sent = []
            for k in range(count):
                if k and args.think_ms:
                    # The client reading its answer: no event to wait on, a pause is the point.
                    await asyncio.sleep(args.think_ms / 1000)
                sent.append(await request_once(https[n], side, talk, prompts, sessions_on))
            return sent

        started = time.perf_counter()
        results = await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        if out is not None:
            for samples in results:
                out.extend(samples)
        return elapsed

    samples: dict[str, list[Sample]] = {side.label: [] for side in sides}
    elapsed = dict.fromkeys(samples, 0.0)
    cpu_ns: dict[str, dict[str, int]] = {label: {} for label in samples}
    try:
        for side in sides:
            await batch_of(side, max(1, math.ceil(warmup / clients)), None)
        remaining = per_client
        for index in itertools.count():
            if remaining <= 0:
                break
            count = min(batch, remaining)
            remaining -= count
            # Rotated and reversed in turn: no side always runs right after another.
            order = sides[index % len(sides) :] + sides[: index % len(sides)]
            if index % 2:
                order.reverse()
            for side in order:
                before = cpu.snapshot()
                elapsed[side.label] += await batch_of(side, count, samples[side.label])
                spent = cpu_ns[side.label]
                for name, used in cpu.snapshot().items():
                    spent[name] = spent.get(name, 0) + used - before.get(name, 0)
    finally:
        for http in https:
            await http.close()
    results = {}
    for label, got in samples.items():
        results[label] = SideResult(
            requests=len(got),
            elapsed_s=elapsed[label],
            ttft_ms=Summary.of([s.ttft_ms for s in got]),
            total_ms=Summary.of([s.total_ms for s in got]),
            cpu_ms_per_request={k: v / 1e6 / len(got) for k, v in cpu_ns[label].items()},
        )
    return PhaseResult(clients, clients * per_client, results, samples)


# -- repeats: medians -------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def _median_summary(summaries: Sequence[Summary]) -> Summary:
    return Summary(
        _median([s.p50 for s in summaries]),
        _median([s.p90 for s in summaries]),
        _median([s.p99 for s in summaries]),
        _median([s.mean for s in summaries]),
    )


def median_side(results: Sequence[SideResult]) -> SideResult:
    """Each statistic the median of the repeats' (so a p99 is the median of R p99s)."""
    names = sorted({name for r in results for name in r.cpu_ms_per_request})
    return SideResult(
        requests=sum(r.requests for r in results),
        elapsed_s=sum(r.elapsed_s for r in results),
        ttft_ms=_median_summary([r.ttft_ms for r in results]),
        total_ms=_median_summary([r.total_ms for r in results]),
        cpu_ms_per_request={
            n: _median([r.cpu_ms_per_request.get(n, 0.0) for r in results]) for n in names
        },
    )


@dataclass
class ClientsResult:
    clients: int
    repeats: list[PhaseResult]
    median: dict[str, SideResult]


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    config: dict[str, Any]
    environment: dict[str, Any]
    loadavg: dict[str, str]
    litellm: str
    results: list[ClientsResult]
    emulator_stats: dict[str, Any]
    plots: list[str]


def find_litellm(args: argparse.Namespace) -> Path | None:
    if args.no_litellm:
        return None
    if args.litellm is not None:
        if not os.access(args.litellm, os.X_OK):
            raise BenchError(f"--litellm {args.litellm} is not an executable")
        return Path(args.litellm)
    if os.access(LITELLM_DEFAULT, os.X_OK):
        return LITELLM_DEFAULT
    found = shutil.which("litellm")
    return Path(found) if found else None


def start_litellm(
    cleanup: contextlib.ExitStack, workdir: Path, binary: Path, emulator_url: str
) -> tuple[ServiceProcess, str]:
    """LiteLLM's proxy in front of the emulator (its `ollama_chat` provider, which calls
    `/api/chat`), with the settings it needs to start at all (a master key) and no more."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        f"    litellm_params: {{model: ollama_chat/{MODEL}, api_base: '{emulator_url}'}}\n"
        "litellm_settings: {drop_params: true, telemetry: false}\n"
        f"general_settings: {{master_key: {LITELLM_KEY}}}\n"
    )
    port = free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    argv = [str(binary), "--config", str(config), "--host", LOOPBACK, "--port", str(port)]
    process = ServiceProcess(
        "litellm", argv, env, f"{url}/health/liveliness", workdir / "logs" / "litellm.log"
    )
    cleanup.callback(process.stop)
    log(f"starting LiteLLM's proxy ({binary})")
    process.start()
    # It imports a great deal: 15 to 20 s on this machine.
    process.wait_ready(180)
    return process, url


def make_sides(
    stack: Stack, litellm_url: str | None, corral_mode: str, surfaces: Sequence[str]
) -> list[Side]:
    json_headers = {"Content-Type": "application/json"}
    corral_headers = dict(json_headers)
    if corral_mode == "bare":
        # As bench/latency.py: no queue chunks at all.
        corral_headers["X-Queue-Progress"] = "0"
    sides: list[Side] = []
    if "native" in surfaces:
        sides += [
            Side("native", "direct", f"{stack.emulator_url}/api/chat", json_headers, False, None),
            Side("native", "corral", f"{stack.gateway_url}/api/chat", corral_headers, True),
        ]
    if "openai" in surfaces:
        v1 = "/v1/chat/completions"
        sides += [
            Side("openai", "direct", f"{stack.emulator_url}{v1}", json_headers, False, None),
            Side("openai", "corral", f"{stack.gateway_url}{v1}", corral_headers, True),
        ]
        if litellm_url is not None:
            auth = {**json_headers, "Authorization": f"Bearer {LITELLM_KEY}"}
            sides.append(Side("openai", "litellm", f"{litellm_url}{v1}", auth, False, None))
    # Direct and LiteLLM share the one backend slot through a lock of their own each.
    for side in sides:
        if side.name != "corral":
            side.lock = asyncio.Lock()
    return sides


def loadavg() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])
    return "?"


async def measure(
    args: argparse.Namespace,
    stack: Stack,
    litellm: ServiceProcess | None,
    litellm_url: str | None,
    litellm_note: str,
) -> Report:
    sides = make_sides(stack, litellm_url, args.corral, args.surfaces)
    groups = {"client": [os.getpid()], **stack.pids()}
    if litellm is not None and litellm.pid is not None:
        groups["litellm"] = [litellm.pid]
    cpu = CpuMeter(groups)
    counters = broker_counters(stack) if args.count_requests > 0 else None
    prompts = Prompts(args.tokens)
    run_id = f"cmp{os.getpid()}"
    load = {"start": loadavg()}
    results: list[ClientsResult] = []
    sent = 0
    background: dict[str, float] = {}
    if counters is not None:
        log("broker: its background traffic over 4 s, then counts apart from the timed batches")
        background = await counters.idle(4.0)
    async with EmulatorControl(stack.emulator_url) as control:
        await control.reset()
        for clients in args.clients:
            repeats = []
            for repeat in range(args.repeats):
                phase = await run_phase(
                    clients,
                    args.requests,
                    args.warmup,
                    sides,
                    prompts,
                    args,
                    cpu,
                    f"{run_id}r{repeat}",
                )
                repeats.append(phase)
                per_client = phase.requests_per_side // clients
                warm = max(1, math.ceil(args.warmup / clients))
                sent += len(sides) * clients * (per_client + warm)
            median = {
                label: median_side([p.sides[label] for p in repeats]) for label in repeats[0].sides
            }
            for side in sides if counters is not None else []:
                if side.name != "corral":
                    # Nothing else on this machine talks to the broker.
                    continue
                median[side.label].broker_per_request = await count_messages(
                    counters,
                    background,
                    side,
                    clients,
                    args.count_requests,
                    prompts,
                    args.sessions == "on",
                    args.turns,
                    f"{run_id}c{clients}",
                )
                sent += clients * max(1, math.ceil(args.count_requests / clients))
            results.append(ClientsResult(clients, repeats, median))
            load[f"after {_clients(clients)}"] = loadavg()
        stats = await control.stats()
    check_backend_record(stats, sent)
    return Report(
        config={
            "clients": args.clients,
            "requests": args.requests,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "tokens": args.tokens,
            "token_delay_ms": args.token_delay_ms,
            "turns": args.turns,
            "think_ms": args.think_ms,
            "corral": args.corral,
            "sessions": args.sessions,
            "surfaces": args.surfaces,
            "count_requests": args.count_requests,
            "broker_background_per_s": background,
            "model": MODEL,
            "broker": "external" if args.amqp_url else "throwaway node",
        },
        environment=await environment(stack.amqp_url),
        loadavg=load,
        litellm=litellm_note,
        results=results,
        emulator_stats=stats,
        plots=[],
    )


def run(args: argparse.Namespace) -> int:
    def body(workdir: Path, cleanup: contextlib.ExitStack) -> Report:
        binary = find_litellm(args)
        amqp_url, node = start_broker(cleanup, args.amqp_url)
        default = args.corral == "default"
        stack = start_services(
            cleanup,
            workdir,
            amqp_url,
            node,
            {"token_delay_ms": args.token_delay_ms},
            session_store=default,
            log_level="info" if default else "warning",
            # As `make run`: every request counted against its caller's rate limit (the
            # store's counters, shared every CORRAL_RATE_LIMIT_SYNC_MS), with a limit this
            # benchmark never reaches.
            env={"CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE": str(BENCH_RATE_LIMIT)}
            if default
            else None,
        )
        litellm, litellm_url, note = None, None, "not run (--no-litellm)"
        if "openai" not in args.surfaces:
            note = "not run (no OpenAI surface)"
        elif binary is None and not args.no_litellm:
            note = "not installed"
            log(
                "LiteLLM is not installed, so its side is skipped: `make bench-install` "
                "installs it (into bench/litellm/.venv), or point --litellm at a `litellm`"
            )
        elif binary is not None:
            litellm, litellm_url = start_litellm(cleanup, workdir, binary, stack.emulator_url)
            note = _litellm_version(binary)
        report = asyncio.run(measure(args, stack, litellm, litellm_url, note))
        if not args.no_plots:
            report.plots = write_plots(report, args.plots)
        return report

    return run_bench(args, body, markdown, report_json)


def _litellm_version(binary: Path) -> str:
    python = binary.parent / "python"
    metadata = REPO / "bench" / "litellm" / "pyproject.toml"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return f"litellm {done.stdout.strip()}"
    return f"litellm (version unknown; see {metadata})"


# -- output -----------------------------------------------------------------------------------


def _added(side: SideResult, direct: SideResult | None) -> tuple[float, float, float, float]:
    if direct is None:
        return (math.nan,) * 4
    return (
        side.ttft_ms.p50 - direct.ttft_ms.p50,
        side.ttft_ms.p99 - direct.ttft_ms.p99,
        side.total_ms.p50 - direct.total_ms.p50,
        side.total_ms.p99 - direct.total_ms.p99,
    )


def _direct_of(label: str, sides: Mapping[str, SideResult]) -> SideResult | None:
    return sides.get(f"{label.split('/')[0]}/direct")


def markdown(report: Report) -> str:
    cfg, env = report.config, report.environment
    if cfg["corral"] == "bare":
        corral = "scheduler and gateway only, log level warning, no queue feedback, no sessions"
    else:
        corral = (
            "scheduler, session store (SecantusDB) and gateway at their defaults, log level "
            "info, queue feedback on, rate limits counted, "
            + (
                "each conversation kept by Corral (`X-Session-Id`)"
                if cfg["sessions"] == "on"
                else "no sessions (every side gets the whole history)"
            )
        )
    lines = [
        f"Commit {env.get('commit')}, RabbitMQ {env.get('rabbitmq', '?')}, {env.get('cpus')} "
        f"CPUs, load average (1, 5, 15 min) "
        + "; ".join(
            f"{load} {'at the start' if when == 'start' else when}"
            for when, load in report.loadavg.items()
        )
        + f". Corral: {corral}. LiteLLM: {report.litellm}.",
        f"Token delay {cfg['token_delay_ms']:g} ms, {cfg['tokens']} tokens per reply, "
        f"conversations of {cfg['turns']} turns"
        + (f" with {cfg['think_ms']:g} ms between turns" if cfg.get("think_ms") else "")
        + f", {cfg['repeats']} repeat(s) per client count "
        "(each number is the median of the repeats' values). Times in ms; added = this side "
        "minus the direct side of the same surface, per statistic.",
        "",
        "| clients | surface | side | TTFT p50 | TTFT p99 | total p50 | total p99 | "
        "added TTFT p50 | added TTFT p99 | added total p50 | added total p99 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in report.results:
        for label, side in result.median.items():
            surface, name = label.split("/")
            added = _added(side, _direct_of(label, result.median))
            added_text = ["-"] * 4 if name == "direct" else [f"**{a:+.2f}**" for a in added]
            lines.append(
                f"| {result.clients} | {surface} | {name} | {side.ttft_ms.p50:.2f} | "
                f"{side.ttft_ms.p99:.2f} | {side.total_ms.p50:.2f} | {side.total_ms.p99:.2f} | "
                + " | ".join(added_text)
                + " |"
            )
    names = _process_names(report)
    with_broker = any(s.broker_per_request for r in report.results for s in r.median.values())
    broker_head = " | ".join(f"broker {c}/request" for c in BROKER_COUNTERS)
    lines += [
        "",
        "Throughput (requests over the wall time of the side's batches; with one client, "
        "1000 / mean total time), CPU time per request (ms) by process while each side's "
        "batches ran"
        + (
            "; RabbitMQ messages per request (published to it, delivered by it; counted "
            f"over {report.config['count_requests']} more requests, background traffic taken "
            "off; the direct and LiteLLM sides do not use the broker):"
            if with_broker
            else ":"
        ),
        "",
        "| clients | surface | side | req/s | "
        + " | ".join(names)
        + " | all |"
        + (f" {broker_head} |" if with_broker else ""),
        "| --- | --- | --- | ---: | "
        + " | ".join("---:" for _ in names)
        + " | ---: |"
        + (" ---: |" * len(BROKER_COUNTERS) if with_broker else ""),
    ]
    for result in report.results:
        for label, side in result.median.items():
            surface, name = label.split("/")
            cpu = side.cpu_ms_per_request
            cells = " | ".join(f"{cpu.get(n, 0.0):.2f}" for n in names)
            rate = side.requests / side.elapsed_s if side.elapsed_s > 0 else math.nan
            row = (
                f"| {result.clients} | {surface} | {name} | {rate:.1f} | {cells} | "
                f"{sum(cpu.values()):.2f} |"
            )
            if with_broker:
                for counter in BROKER_COUNTERS:
                    value = side.broker_per_request.get(counter)
                    row += f" {'0' if value is None else f'{value:.1f}'} |"
            lines.append(row)
    if report.plots:
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report.plots)]
    return "\n".join(lines)


def _process_names(report: Report) -> list[str]:
    order = [
        "client",
        "emulator",
        "gateway",
        "scheduler",
        "session-store",
        "mongo",
        "rabbitmq",
        "litellm",
    ]
    seen = {n for r in report.results for s in r.median.values() for n in s.cpu_ms_per_request}
    return [n for n in order if n in seen] + sorted(seen - set(order))


def report_json(report: Report) -> dict[str, Any]:
    data = asdict(report)
    for result in data["results"]:
        for phase in result["repeats"]:
            phase["samples"] = {
                label: [[s["ttft_ms"], s["total_ms"]] for s in samples]
                for label, samples in phase["samples"].items()
            }
    return data


# -- plots ------------------------------------------------------------------------------------


def write_plots(report: Report, directory: Path) -> list[str]:
    """Two PNGs in `directory`: the time each side adds, and CPU per request by process
    (compare-latency.png and compare-cpu.png, with the setup in the name when not the default)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed, so no plots: `make bench-install` installs it")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    added_sides = [label for label in report.results[0].median if not label.endswith("/direct")]
    stats = [("TTFT p50", 0), ("TTFT p99", 1), ("total p50", 2), ("total p99", 3)]
    fig, axes = plt.subplots(
        1, len(report.results), figsize=(max(7.0, 5.5 * len(report.results)), 4.6), squeeze=False
    )
    width = 0.8 / max(1, len(added_sides))
    for ax, result in zip(axes[0], report.results, strict=True):
        for index, label in enumerate(added_sides):
            side = result.median[label]
            added = _added(side, _direct_of(label, result.median))
            xs = [i + (index - (len(added_sides) - 1) / 2) * width for i in range(len(stats))]
            bars = ax.bar(xs, [added[k] for _, k in stats], width, label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(stats)), [name for name, _ in stats])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(_clients(result.clients))
        ax.set_ylabel("ms added over calling the backend directly")
        ax.legend(fontsize=8)
    fig.suptitle(
        "Time added per request over calling the backend directly\n"
        f"({_mode(report)}; {report.config['tokens']} tokens, "
        f"{report.config['token_delay_ms']:g} ms/token)",
        fontsize=10,
    )
    fig.tight_layout()
    suffix = _plot_suffix(report)
    path = directory / f"compare-latency{suffix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    names = _process_names(report)
    labels = list(report.results[0].median)
    fig, axes = plt.subplots(
        1, len(report.results), figsize=(max(7.0, 5.5 * len(report.results)), 4.6), squeeze=False
    )
    for ax, result in zip(axes[0], report.results, strict=True):
        bottom = [0.0] * len(labels)
        for name in names:
            values = [result.median[label].cpu_ms_per_request.get(name, 0.0) for label in labels]
            ax.bar(range(len(labels)), values, 0.6, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for x, total in enumerate(bottom):
            ax.annotate(f"{total:.1f}", (x, total), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_title(_clients(result.clients))
        ax.set_ylabel("CPU ms per request")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"CPU time per request, by process\n({_mode(report)})", fontsize=10)
    fig.tight_layout()
    path = directory / f"compare-cpu{suffix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    for path in written:
        log(f"wrote {path}")
    return [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in written]


def _clients(count: int) -> str:
    return "1 client" if count == 1 else f"{count} clients"


def _mode(report: Report) -> str:
    cfg = report.config
    if cfg["corral"] == "bare":
        return "Corral bare: no session store, stateless"
    return "Corral as make run starts it, " + (
        "sessions kept by Corral" if cfg["sessions"] == "on" else "no sessions"
    )


def _plot_suffix(report: Report) -> str:
    """`make bench`'s plots are compare-latency.png and compare-cpu.png; other setups add their
    name, so that one run does not overwrite another's."""
    cfg = report.config
    parts = []
    if cfg["corral"] == "bare":
        parts.append("bare")
    elif cfg["sessions"] == "off":
        parts.append("stateless")
    if cfg["token_delay_ms"]:
        parts.append(f"{cfg['token_delay_ms']:g}ms")
    return "".join(f"-{p}" for p in parts)


# -- arguments --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(
        "bench/compare.py",
        "Corral side by side with the backend called directly, and with LiteLLM's proxy.",
    )
    parser.add_argument(
        "--clients",
        type=positive_ints,
        default=[1, 16],
        help="comma-separated concurrent client counts (default 1,16)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=160,
        help="measured requests per side and repeat for each client count, split across the "
        "clients and rounded up (default 160)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each client count this many times; the report shows the medians (default 1)",
    )
    parser.add_argument(
        "--warmup", type=int, default=16, help="unmeasured requests per side first (default 16)"
    )
    parser.add_argument("--tokens", type=int, default=20, help="tokens per reply (default 20)")
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=0.0,
        help="the emulator's delay before each token (default 0: Corral's cost alone)",
    )
    parser.add_argument(
        "--turns",
        type=int,
        default=8,
        help="turns per conversation before a client starts a new one (default 8)",
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="a client's pause before each next turn (default 0: at once; req/s then counts "
        "the pauses too)",
    )
    parser.add_argument(
        "--corral",
        choices=("default", "bare"),
        default="default",
        help="default: as `make run` (session store, sessions, queue feedback, log level "
        "info); bare: scheduler and gateway only, stateless requests without queue feedback, "
        "log level warning (bench/latency.py's setup)",
    )
    parser.add_argument(
        "--sessions",
        choices=("on", "off"),
        default="on",
        help="on: Corral keeps each conversation (X-Session-Id, only the new message sent); "
        "off: every side gets the whole history from the client (default on; off with "
        "--corral bare)",
    )
    parser.add_argument(
        "--surfaces",
        type=lambda text: [s for s in text.split(",") if s],
        default=["native", "openai"],
        help="comma-separated: native (/api/chat), openai (/v1/chat/completions); default both",
    )
    parser.add_argument(
        "--litellm",
        type=Path,
        help=f"LiteLLM's `litellm` command (default {LITELLM_DEFAULT.relative_to(REPO)}, "
        "then PATH; skipped when absent)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--plots",
        type=Path,
        default=PLOT_DIR,
        help=f"where the PNGs go (default {PLOT_DIR.relative_to(REPO)})",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs")
    parser.add_argument(
        "--count-requests",
        type=int,
        default=32,
        help="after each client count, this many more requests per Corral side counted at the "
        "broker (bench/broker_counts.py; about 1 s a read; 0: no counts; default 32)",
    )
    args = parser.parse_args(argv)
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (the reply always starts with 'Echo:')")
    if min(args.requests, args.repeats, args.turns) < 1:
        parser.error("--requests, --repeats and --turns must be positive")
    if min(args.warmup, args.token_delay_ms, args.count_requests) < 0:
        parser.error("--warmup, --token-delay-ms and --count-requests must not be negative")
    if not args.surfaces or set(args.surfaces) - {"native", "openai"}:
        parser.error("--surfaces takes native, openai or both")
    if args.corral == "bare":
        # Stateless one-message requests, as bench/latency.py sends.
        args.turns, args.sessions = 1, "off"
    return args


def report_from_json(data: dict[str, Any]) -> Report:
    """A report written by --json, for drawing its plots again (the medians only)."""

    def side(raw: dict[str, Any]) -> SideResult:
        return SideResult(
            requests=raw["requests"],
            elapsed_s=raw["elapsed_s"],
            ttft_ms=Summary(**raw["ttft_ms"]),
            total_ms=Summary(**raw["total_ms"]),
            cpu_ms_per_request=raw["cpu_ms_per_request"],
            broker_per_request=raw.get("broker_per_request") or {},
        )

    results = [
        ClientsResult(r["clients"], [], {label: side(s) for label, s in r["median"].items()})
        for r in data["results"]
    ]
    return Report(
        config=data["config"],
        environment=data["environment"],
        loadavg=data["loadavg"],
        litellm=data["litellm"],
        results=results,
        emulator_stats=data["emulator_stats"],
        plots=data.get("plots", []),
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--replot"]:
        # bench/compare.py --replot RESULTS.json [DIR]: plots and tables again from a --json file.
        if len(raw) not in (2, 3):
            print("usage: bench/compare.py --replot RESULTS.json [DIR]", file=sys.stderr)
            return 2
        report = report_from_json(orjson.loads(Path(raw[1]).read_bytes()))
        write_plots(report, Path(raw[2]) if len(raw) == 3 else PLOT_DIR)
        print(markdown(report))
        return 0
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
