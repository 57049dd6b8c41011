"""What the cluster benchmarks share: a throwaway stack (RabbitMQ unless an AMQP URL is given,
the Ollama emulator, one scheduler and one gateway), a run wrapper that stops every process it
started on any exit, percentiles and a description of the machine.

Used by bench/latency.py and bench/estimates.py; not a script of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aio_pika
import aiohttp
import aiormq

from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceError, ServiceProcess
from corral_devstack.rabbitmq import RabbitMQError, RabbitNode, amqp_reachable

LOOPBACK = "127.0.0.1"
R = TypeVar("R")


class BenchError(RuntimeError):
    """A request failed, answered something unexpected, or the run cannot be trusted."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- statistics -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def epoch_ns(stamp: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC stamp with up to nine fraction digits
    (datetime parses only six)."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def check_backend_record(stats: dict[str, Any], sent: int) -> None:
    """From the emulator's `/_emulator/stats`: every request sent through Corral reached this
    emulator (no other scheduler on the broker took a job), and it ran them one at a time."""
    if stats.get("completed") != sent:
        raise BenchError(
            f"the emulator completed {stats.get('completed')} generations, expected {sent}: "
            "is another scheduler consuming this broker's jobs queue?"
        )
    if stats.get("max_active") != 1:
        raise BenchError(f"the emulator ran {stats.get('max_active')} generations at once")


# -- the machine ------------------------------------------------------------------------------


async def environment(amqp_url: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "commit": source_revision(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "aio_pika": aio_pika.__version__,
    }
    with contextlib.suppress(Exception):
        connection = await aiormq.connect(amqp_url)
        try:
            props = connection.server_properties
            info["rabbitmq"] = _text(props.get("version"))
            info["erlang"] = _text(props.get("platform"))
        finally:
            await connection.close()
    return info


def source_revision() -> str:
    """The commit the services ran from, "+dirty" when tracked files differ from it: the
    numbers belong to that code."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if changes else commit


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the stack --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """The running processes and where to reach them."""

    amqp_url: str
    emulator_url: str
    gateway_url: str
    # The scheduler's ops port (/health, /ready, /metrics).
    scheduler_url: str
    services: Mapping[str, ServiceProcess]
    node: RabbitNode | None

    def pids(self) -> dict[str, list[int]]:
        """Process ids by name, RabbitMQ's included when the node is ours."""
        groups = {name: [p.pid] for name, p in self.services.items() if p.pid is not None}
        if self.node is not None:
            groups["rabbitmq"] = self.node.leftover_pids()
        return groups


def start_emulator(workdir: Path, knobs: Mapping[str, float]) -> tuple[ServiceProcess, str]:
    """The emulator with latency knobs by their CLI names without dashes (`token_delay_ms`,
    `prompt_ms_per_token`, `load_ms`)."""
    port = free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "corral_emulator", "--host", LOOPBACK, "--port", str(port)]
    for name, value in knobs.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    process = ServiceProcess("emulator", argv, {}, f"{url}/api/version", workdir / "emulator.log")
    return process, url


def _start_stack(
    cleanup: contextlib.ExitStack, workdir: Path, amqp_url: str | None, knobs: Mapping[str, float]
) -> Stack:
    node: RabbitNode | None = None
    if amqp_url:
        if not amqp_reachable(amqp_url):
            raise BenchError(f"no AMQP broker answers at {amqp_url}")
    else:
        log("starting a throwaway RabbitMQ node")
        node = RabbitNode()
        cleanup.callback(node.close)
        node.start()
        amqp_url = node.url
    emulator, emulator_url = start_emulator(workdir / "logs", knobs)
    cleanup.callback(emulator.stop)
    emulator.start()
    emulator.wait_ready(30)
    # The benchmarks send hundreds of requests a minute from one address: no rate limits.
    no_limits = {
        "CORRAL_RATE_LIMIT_PER_MINUTE": "0",
        "CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE": "0",
        "CORRAL_AUTH_FAILURES_PER_MINUTE": "0",
    }
    cluster = Cluster(amqp_url, emulator_url, workdir, no_limits, log_level="warning")
    cleanup.callback(cluster.stop_all)
    log("starting scheduler and gateway")
    scheduler = cluster.start_scheduler()
    cluster.start_gateway()
    return Stack(
        amqp_url=amqp_url,
        emulator_url=emulator_url,
        gateway_url=cluster.gateway_url,
        scheduler_url=(scheduler.ready_url or "").removesuffix("/ready"),
        services={"emulator": emulator, **cluster.services},
        node=node,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM takes the same path as Ctrl-C, through every `finally` that stops a process.
    raise KeyboardInterrupt


def run_with_stack(
    args: argparse.Namespace,
    knobs: Mapping[str, float],
    measure: Callable[[Stack], Coroutine[Any, Any, R]],
    render: Callable[[R], str],
    as_json: Callable[[R], Any],
) -> int:
    """Start the stack (on `args.amqp_url` if set), `measure` on it, print what `render`
    makes of the result and write `as_json` of it to `args.json` if set; stop everything.

    Returns the exit status: 0 done, 1 failed (the service logs are kept and their path
    printed), 130 interrupted (Ctrl-C or SIGTERM).
    """
    # SIGINT explicitly too: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    cleanup = contextlib.ExitStack()
    status = 1
    try:
        stack = _start_stack(cleanup, workdir, args.amqp_url, knobs)
        result = asyncio.run(measure(stack))
        if args.json is not None:
            args.json.write_text(json.dumps(as_json(result), indent=2) + "\n")
            log(f"wrote {args.json}")
        status = 0
        print(render(result), flush=True)
    except BrokenPipeError:
        # The reader of stdout (`| head`) left; the run itself succeeded. Point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        log("interrupted")
        status = 130
    except (BenchError, ServiceError, RabbitMQError, aiohttp.ClientError, OSError) as exc:
        log(f"error: {exc}")
    finally:
        status = _stop(cleanup, workdir, status)
    return status


def _stop(cleanup: contextlib.ExitStack, workdir: Path, status: int) -> int:
    # Stopping is bounded by the processes' own timeouts; a second Ctrl-C must not leave
    # half of them running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        cleanup.close()
    except Exception as exc:
        log(f"error while stopping: {exc}")
        status = status or 1
    logs = workdir / "logs"
    if status == 1 and logs.exists():
        log(f"service logs kept in {logs}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


def argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with `--amqp-url` and `--json`, which every cluster benchmark takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--amqp-url",
        help="use this broker instead of a throwaway node; no other scheduler may consume "
        "its jobs queue",
    )
    parser.add_argument("--json", type=Path, help="also write the results (and raw samples) here")
    return parser


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16, not {text!r}")
    return values
