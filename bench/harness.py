"""What the cluster benchmarks share: a throwaway stack (RabbitMQ unless an AMQP URL is given,
the Ollama emulator, one scheduler and one gateway; or a pool of emulators behind the scheduler
through `CORRAL_BACKENDS`), a run wrapper that stops every process it started on any exit,
percentiles and a description of the machine.

Used by bench/latency.py, bench/estimates.py and bench/pool.py; not a script of its own.
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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aio_pika
import aiohttp
import aiormq

from corral_devstack.cluster import Cluster
from corral_devstack.mongo import SecantusNode
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
    # A pool: each server's name (as in `CORRAL_BACKENDS` and the scheduler's metrics) and its
    # emulator's URL. Empty when the scheduler drives the one emulator at `emulator_url`.
    pool: Mapping[str, str] = field(default_factory=dict)
    # The session store's database (SecantusDB, as `make run` starts) when a store runs.
    mongo: SecantusNode | None = None

    @property
    def emulator_urls(self) -> dict[str, str]:
        """Every emulator by server name (`emulator` for the one backend)."""
        return dict(self.pool) if self.pool else {"emulator": self.emulator_url}

    def pids(self) -> dict[str, list[int]]:
        """Process ids by name, RabbitMQ's included when the node is ours."""
        groups = {name: [p.pid] for name, p in self.services.items() if p.pid is not None}
        if self.mongo is not None and self.mongo.pid is not None:
            groups["mongo"] = [self.mongo.pid]
        if self.node is not None:
            groups["rabbitmq"] = self.node.leftover_pids()
        return groups


def start_emulator(
    workdir: Path, knobs: Mapping[str, float], name: str = "emulator"
) -> tuple[ServiceProcess, str]:
    """The emulator with latency knobs by their CLI names without dashes (`token_delay_ms`,
    `prompt_ms_per_token`, `load_ms`), logging to `<workdir>/<name>.log`. Started by the
    caller (`process.start()`)."""
    port = free_port(LOOPBACK)
    url = f"http://{LOOPBACK}:{port}"
    argv = [sys.executable, "-m", "corral_emulator", "--host", LOOPBACK, "--port", str(port)]
    for knob, value in knobs.items():
        argv += [f"--{knob.replace('_', '-')}", str(value)]
    process = ServiceProcess(name, argv, {}, f"{url}/api/version", workdir / f"{name}.log")
    return process, url


def start_broker(
    cleanup: contextlib.ExitStack, amqp_url: str | None
) -> tuple[str, RabbitNode | None]:
    """`amqp_url` when a broker answers there, else a throwaway RabbitMQ node stopped by
    `cleanup`; the URL and the node (None when not ours)."""
    if amqp_url:
        if not amqp_reachable(amqp_url):
            raise BenchError(f"no AMQP broker answers at {amqp_url}")
        return amqp_url, None
    log("starting a throwaway RabbitMQ node")
    node = RabbitNode()
    cleanup.callback(node.close)
    node.start()
    return node.url, node


def start_services(
    cleanup: contextlib.ExitStack,
    workdir: Path,
    amqp_url: str,
    node: RabbitNode | None,
    knobs: Mapping[str, float],
    *,
    servers: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    session_store: bool = False,
    log_level: str = "warning",
) -> Stack:
    """The emulator(s), one scheduler and one gateway on `amqp_url`, stopped by `cleanup`;
    logs in `<workdir>/logs`. With `servers`, one emulator per name, listed to the scheduler
    as a pool (`CORRAL_BACKENDS=name=url,...`); without, one emulator as the one backend.
    `env` is laid over the services' environment (e.g. `CORRAL_POOL_POLICY`). With
    `session_store`, also a session store on a SecantusDB of its own under `<workdir>/mongo`,
    as `make run` starts them (sessions kept, history assembled). `log_level` is the services'
    `CORRAL_LOG_LEVEL` (`info`, their default, writes an access-log line per request)."""
    logs = workdir / "logs"
    names = list(servers) or ["emulator"]
    emulators: dict[str, tuple[ServiceProcess, str]] = {}
    for name in names:
        process, url = start_emulator(logs, knobs, name)
        cleanup.callback(process.stop)
        process.start()
        emulators[name] = (process, url)
    for process, _ in emulators.values():
        process.wait_ready(30)
    pool = {name: url for name, (_, url) in emulators.items()} if servers else {}
    # The benchmarks send hundreds of requests a minute from one address: no rate limits.
    service_env = {
        "CORRAL_RATE_LIMIT_PER_MINUTE": "0",
        "CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE": "0",
        "CORRAL_AUTH_FAILURES_PER_MINUTE": "0",
        **({"CORRAL_BACKENDS": ",".join(f"{n}={u}" for n, u in pool.items())} if pool else {}),
        **(env or {}),
    }
    mongo = None
    if session_store:
        mongo = SecantusNode(workdir / "mongo", log_path=logs / "mongo.log")
        cleanup.callback(mongo.stop)
        log("starting SecantusDB for the session store")
        mongo.start()
        service_env["CORRAL_MONGO_URL"] = mongo.url
    first_url = next(iter(emulators.values()))[1]
    cluster = Cluster(amqp_url, first_url, workdir, service_env, log_level=log_level)
    cleanup.callback(cluster.stop_all)
    log(f"starting scheduler{', session store' if session_store else ''} and gateway")
    scheduler = cluster.start_scheduler()
    if session_store:
        # Its own name: the service's module is corral_session_store.
        cluster.start_health_service("corral_session_store", "session-store")
    cluster.start_gateway()
    return Stack(
        amqp_url=amqp_url,
        emulator_url=first_url,
        gateway_url=cluster.gateway_url,
        scheduler_url=(scheduler.ready_url or "").removesuffix("/ready"),
        services={
            **{process.name: process for process, _ in emulators.values()},
            **cluster.services,
        },
        node=node,
        pool=pool,
        mongo=mongo,
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

    def body(workdir: Path, cleanup: contextlib.ExitStack) -> R:
        amqp_url, node = start_broker(cleanup, args.amqp_url)
        stack = start_services(cleanup, workdir, amqp_url, node, knobs)
        return asyncio.run(measure(stack))

    return run_bench(args, body, render, as_json)


def run_bench(
    args: argparse.Namespace,
    body: Callable[[Path, contextlib.ExitStack], R],
    render: Callable[[R], str],
    as_json: Callable[[R], Any],
    verdict: Callable[[R], str | None] = lambda _result: None,
) -> int:
    """`body(workdir, cleanup)` starts what it needs (`start_broker`, `start_services`),
    registering each stop on `cleanup`, and measures; then as `run_with_stack`. A `verdict`
    that finds fault with the result (after it is printed and written) fails the run with
    its message.
    """
    # SIGINT explicitly too: a shell starts background jobs with it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    cleanup = contextlib.ExitStack()
    status = 1
    try:
        result = body(workdir, cleanup)
        if args.json is not None:
            args.json.write_text(json.dumps(as_json(result), indent=2) + "\n")
            log(f"wrote {args.json}")
        fault = verdict(result)
        status = 0 if fault is None else 1
        print(render(result), flush=True)
        if fault is not None:
            log(f"error: {fault}")
    except BrokenPipeError:
        # The reader of stdout (`| head`) left; the run itself is judged. Point stdout at
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
    logs = sorted(str(path) for path in workdir.glob("**/logs") if path.is_dir())
    if status == 1 and logs:
        log(f"service logs kept in {', '.join(logs)}")
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


def cpu_ns(*pids: int) -> int:
    """CPU time used so far by every thread of `pids`, in ns, from
    /proc/<pid>/task/*/schedstat (Linux; finer than /proc/<pid>/stat's clock ticks). A process
    or thread that is gone counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.scandir(f"/proc/{pid}/task"):
                # A thread may end between listing and reading.
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"{task.path}/schedstat") as fh,
                ):
                    total += int(fh.read().split()[0])
    return total
