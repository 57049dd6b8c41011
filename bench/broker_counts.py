"""How many messages RabbitMQ handled, read before and after a run, so a benchmark can say how
many broker messages each request cost.

    from broker_counts import BrokerCounters, MessageTrace

    counters = BrokerCounters.for_node(stack.node)   # our throwaway node (bench/harness.py)
    # or BrokerCounters.for_prometheus("http://host:15692/metrics") for a broker of one's own
    before = await counters.read()
    ...  # send N requests
    used = await counters.read() - before
    used.per_request(N)          # {"published": 4.0, "delivered": 4.0, "confirmed": 1.0, ...}
    print(used.table(N))         # the same as a markdown table

As a script, it counts on a stack of its own (RabbitMQ, the emulator, scheduler, gateway; with
`--session`, a session store on its own SecantusDB too, and every chat in one session; with
`--store`, the session store but chats without a session, as most run under `make run`): the
messages and the CPU time per request of every process, over `--requests` streaming chats sent
one after another, counters and CPU read before and after (no firehose).

    uv run python bench/broker_counts.py [--requests N] [--session | --store]
        [--token-delay-ms D] [--tokens T] [--json OUT]

Two ways to count, both without a plugin the throwaway node does not run:

- `BrokerCounters` reads the node's global counters (`rabbit_global_counters`, RabbitMQ 3.9+):
  publishes in, publishes on confirm channels, confirms sent, unroutable ones, deliveries and
  acks split by queue type (classic, quorum). On our own node it asks `rabbitmqctl eval` (about
  0.4 s per read, no plugin, nothing running between reads, so it costs the measured run
  nothing); on another broker, the same counters from the `rabbitmq_prometheus` plugin
  (`rabbitmq_global_messages_*`, port 15692). Node-wide: everything on the node counts, the
  services' periodic status broadcasts too (a scheduler's every 2 s); `BrokerCounters.idle`
  measures that background so it can be taken off.
- `MessageTrace` (the firehose, `rabbitmqctl trace_on`) sees every publish and every delivery
  with its exchange, queue, routing key and delivery mode: the exact list of messages one
  request makes. It doubles the broker's work while on: for enumerating, never while timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from corral_devstack.rabbitmq import RABBITMQCTL, RabbitNode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Our names for the global counters, in the order tables show them, with what each counts.
COUNTERS: dict[str, str] = {
    "published": "messages published to the broker (every channel)",
    "published_confirmed": "of those, on channels with publisher confirms",
    "confirmed": "publisher confirms the broker sent back",
    "routed": "publishes routed to at least one queue",
    "unroutable": "publishes no queue took (returned to the publisher, or dropped)",
    "delivered": "deliveries to consumers (one per queue a message went to)",
    "delivered_classic": "of those, from classic queues",
    "delivered_quorum": "of those, from quorum queues",
    "acked": "deliveries acknowledged by consumers",
    "redelivered": "deliveries that were redeliveries",
}

# `rabbitmqctl eval` prints one line per counter: `<labels> <counter> <value>`.
_EVAL = (
    "lists:foreach(fun({L, Cs}) -> "
    'Ls = string:join([atom_to_list(K) ++ "=" ++ atom_to_list(V) || {K, V} <- L], ","), '
    'maps:foreach(fun(C, V) -> io:format("~s ~s ~p~n", [Ls, C, V]) end, Cs) '
    "end, maps:to_list(rabbit_global_counters:overview()))."
)
_PROMETHEUS_LINE = re.compile(r"^rabbitmq_global_(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$")
_QUEUE_TYPES = {"rabbit_classic_queue": "classic", "rabbit_quorum_queue": "quorum"}


class CounterError(RuntimeError):
    """The counters could not be read."""


@dataclass(frozen=True)
class Counts:
    """The counters at one moment (or, subtracted, over a run)."""

    values: Mapping[str, float]
    # time.monotonic() when read; for a difference, the seconds it spans.
    at: float

    def __sub__(self, earlier: Counts) -> Counts:
        return Counts(
            {k: v - earlier.values.get(k, 0.0) for k, v in self.values.items()},
            self.at - earlier.at,
        )

    def __getitem__(self, name: str) -> float:
        return self.values.get(name, 0.0)

    def without(self, background: Mapping[str, float]) -> Counts:
        """Less a background rate (per second, `BrokerCounters.idle`) over the span."""
        return Counts(
            {k: max(0.0, v - background.get(k, 0.0) * self.at) for k, v in self.values.items()},
            self.at,
        )

    def per_request(self, requests: int) -> dict[str, float]:
        return {name: self[name] / requests for name in COUNTERS}

    def table(self, requests: int) -> str:
        """A markdown table: each counter in all and per request."""
        lines = [
            "| counter | total | per request | what it counts |",
            "| --- | ---: | ---: | --- |",
        ]
        for name, meaning in COUNTERS.items():
            lines.append(f"| {name} | {self[name]:.0f} | {self[name] / requests:.2f} | {meaning} |")
        return "\n".join(lines)


def _normalise(raw: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Our counters from the raw ones, keyed by (queue type or "", RabbitMQ's counter name)."""

    def total(name: str, queue_type: str | None = None) -> float:
        return sum(
            value
            for (qt, counter), value in raw.items()
            if counter == name and (qt != "" if queue_type is None else qt == queue_type)
        )

    return {
        "published": raw.get(("", "messages_received_total"), 0.0),
        "published_confirmed": raw.get(("", "messages_received_confirm_total"), 0.0),
        "confirmed": raw.get(("", "messages_confirmed_total"), 0.0),
        "routed": raw.get(("", "messages_routed_total"), 0.0),
        "unroutable": raw.get(("", "messages_unroutable_returned_total"), 0.0)
        + raw.get(("", "messages_unroutable_dropped_total"), 0.0),
        "delivered": total("messages_delivered_total"),
        "delivered_classic": total("messages_delivered_total", "classic"),
        "delivered_quorum": total("messages_delivered_total", "quorum"),
        "acked": total("messages_acknowledged_total"),
        "redelivered": total("messages_redelivered_total"),
    }


def _queue_type(labels: Mapping[str, str]) -> str:
    """`classic`, `quorum` (or RabbitMQ's own name for another type); "" for no queue type."""
    queue_type = labels.get("queue_type", "")
    return _QUEUE_TYPES.get(queue_type, queue_type)


def _labels(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.replace('"', "").split(",") if "=" in part)


class BrokerCounters:
    """Reads one node's global message counters; `read()` before and after a run."""

    def __init__(self, *, node: RabbitNode | None = None, prometheus_url: str | None = None):
        if (node is None) == (prometheus_url is None):
            raise ValueError("give a node or a Prometheus URL")
        self.node = node
        self.prometheus_url = prometheus_url

    @classmethod
    def for_node(cls, node: RabbitNode) -> BrokerCounters:
        return cls(node=node)

    @classmethod
    def for_prometheus(cls, url: str) -> BrokerCounters:
        """`url`: the plugin's `/metrics` (e.g. http://127.0.0.1:15692/metrics)."""
        return cls(prometheus_url=url)

    async def read(self) -> Counts:
        raw = await (self._from_node() if self.node is not None else self._from_prometheus())
        return Counts(_normalise(raw), time.monotonic())

    async def idle(self, seconds: float = 4.0) -> dict[str, float]:
        """The node's background traffic per second (status broadcasts and the like), measured
        over `seconds` with nothing else going on."""
        before = await self.read()
        await asyncio.sleep(seconds)
        used = await self.read() - before
        return {name: value / used.at for name, value in used.values.items()}

    async def _from_node(self) -> dict[tuple[str, str], float]:
        assert self.node is not None
        out = await ctl(self.node, "eval", _EVAL)
        raw: dict[tuple[str, str], float] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            labels = _labels(parts[0])
            if labels.get("protocol", "amqp091") != "amqp091" or "dead_letter_strategy" in labels:
                continue
            raw[(_queue_type(labels), parts[1])] = float(parts[2])
        if not raw:
            raise CounterError(f"no counters in rabbitmqctl's answer: {out[:200]!r}")
        return raw

    async def _from_prometheus(self) -> dict[tuple[str, str], float]:
        assert self.prometheus_url is not None
        async with aiohttp.ClientSession() as session, session.get(self.prometheus_url) as resp:
            if resp.status != 200:
                raise CounterError(f"{self.prometheus_url} answered {resp.status}")
            text = await resp.text()
        raw: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            match = _PROMETHEUS_LINE.match(line.strip())
            if match is None:
                continue
            name, labels = match.group(1), _labels(match.group(2))
            if labels.get("protocol", "amqp091") != "amqp091" or "dead_letter_strategy" in labels:
                continue
            key = (_queue_type(labels), name)
            raw[key] = raw.get(key, 0.0) + float(match.group(3))
        if not raw:
            raise CounterError(f"no rabbitmq_global_* counters at {self.prometheus_url}")
        return raw


async def ctl(node: RabbitNode, *args: str, limit_s: float = 30) -> str:
    """`rabbitmqctl <args>` against `node` (its own environment: node name, epmd port, cookie);
    its output."""
    # RabbitNode keeps the environment that reaches its node to itself; rabbitmqctl needs it.
    env = node._env()
    proc = await asyncio.create_subprocess_exec(
        str(RABBITMQCTL),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CounterError(f"rabbitmqctl {args[0]} took over {limit_s} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise CounterError(f"rabbitmqctl {args[0]} failed ({proc.returncode}): {text[-500:]}")
    return text


# -- the firehose: every message, named -----------------------------------------------------


@dataclass(frozen=True)
class Traced:
    """One publish or delivery as the firehose reported it."""

    op: str  # "publish" or "deliver"
    # The exchange published to (publish) or the queue delivered from (deliver).
    where: str
    exchange: str
    routing_key: str
    persistent: bool
    redelivered: bool = False

    @property
    def kind(self) -> str:
        """What the message is, from its routing key: an event's kind (its last word: `done`,
        `token`, `turn`...), `job`, `rpc` for a reply, else the key."""
        if self.exchange == "corral.jobs":
            return "job"
        if self.exchange == "corral.events" and self.routing_key.startswith("gw."):
            return self.routing_key.rsplit(".", 1)[-1]
        if self.exchange == "" or self.routing_key.startswith("amq.gen-"):
            return "rpc reply"
        return self.routing_key


@dataclass
class MessageTrace:
    """Records every publish and delivery in one virtual host while open (`rabbitmqctl trace_on`).

        async with MessageTrace(node, amqp_url, vhost="cluster1") as trace:
            ...  # one request
            await trace.settle()
        trace.summary()  # Counter of (op, where, kind)

    The trace queue itself is left out. Tracing doubles the broker's work: count with it, never
    time with it on."""

    node: RabbitNode
    amqp_url: str
    vhost: str = "/"
    records: list[Traced] = field(default_factory=list)
    _connection: AbstractConnection | None = None
    _queue_name: str = ""
    _last: float = 0.0

    async def __aenter__(self) -> MessageTrace:
        await ctl(self.node, "trace_on", "-p", self.vhost)
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        self._queue_name = queue.name
        await queue.bind("amq.rabbitmq.trace", "#")
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(CounterError):
            await ctl(self.node, "trace_off", "-p", self.vhost)
        if self._connection is not None:
            await self._connection.close()

    def clear(self) -> None:
        self.records.clear()

    async def settle(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Wait until no trace message arrived for `quiet_s` (everything in flight is in)."""
        deadline = time.monotonic() + timeout_s
        self._last = time.monotonic()
        while time.monotonic() < deadline:
            left = self._last + quiet_s - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._last = time.monotonic()
        op, _, where = (message.routing_key or "").partition(".")
        if where == self._queue_name:
            return
        headers: dict[str, Any] = dict(message.headers or {})
        keys = headers.get("routing_keys") or [""]
        props = headers.get("properties") or {}
        self.records.append(
            Traced(
                op=op,
                where=where,
                exchange=_text(headers.get("exchange_name", "")),
                routing_key=_text(keys[0]),
                persistent=props.get("delivery_mode") == 2,
                redelivered=bool(headers.get("redelivered", 0)),
            )
        )

    def summary(self, *, ignore: tuple[str, ...] = ("status.",)) -> Counter[tuple[str, str, str]]:
        """How many of each (op, exchange or queue, kind); the periodic broadcasts (routing keys
        starting with one of `ignore`) left out."""
        return Counter(
            (r.op, r.where, r.kind) for r in self.records if not r.routing_key.startswith(ignore)
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the script: messages and CPU per request on a stack of its own ----------------------------


async def _chats(url: str, count: int, session_id: str | None, tokens: int) -> None:
    headers = {"Content-Type": "application/json", "X-Queue-Progress": "0"}
    if session_id is not None:
        headers["X-Session-Id"] = session_id
    # As bench/latency.py's prompts: the emulator answers "Echo:" and one token per word.
    words = " ".join(["word"] * max(0, tokens - 2))
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            body = {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": f"q{n} {words}"}],
                "stream": True,
            }
            async with http.post(f"{url}/api/chat", json=body, headers=headers) as response:
                if response.status != 200:
                    raise CounterError(f"chat answered {response.status}")
                await response.read()


async def _measure(stack: Any, args: argparse.Namespace) -> dict[str, Any]:
    from harness import cpu_ns

    counters = BrokerCounters.for_node(stack.node)
    session_id = uuid.uuid4().hex if args.session else None
    await _chats(stack.gateway_url, args.warmup, session_id, args.tokens)
    background = await counters.idle(4.0)
    groups = stack.pids()
    cpu_before = {name: cpu_ns(*pids) for name, pids in groups.items()}
    before = await counters.read()
    await _chats(stack.gateway_url, args.requests, session_id, args.tokens)
    used = (await counters.read() - before).without(background)
    cpu = {
        name: (cpu_ns(*pids) - cpu_before[name]) / 1e6 / args.requests
        for name, pids in groups.items()
    }
    return {
        "requests": args.requests,
        "session": args.session,
        "store": args.session or args.store,
        "token_delay_ms": args.token_delay_ms,
        "tokens": args.tokens,
        "messages_per_request": used.per_request(args.requests),
        "cpu_ms_per_request": cpu,
    }


def _render(result: dict[str, Any]) -> str:
    kind = "with a session" if result["session"] else "without a session"
    if result["store"] and not result["session"]:
        kind += " (a session store running)"
    lines = [
        f"{result['requests']} streaming /api/chat one after another, {kind}, "
        f"{result['tokens']} words, token delay {result['token_delay_ms']:g} ms",
        "",
        "| counter | per request |",
        "| --- | ---: |",
    ]
    for name, value in result["messages_per_request"].items():
        lines.append(f"| {name} | {value:.2f} |")
    cpu = result["cpu_ms_per_request"]
    lines += ["", "| CPU ms per request | " + " | ".join(cpu) + " | Corral + broker |"]
    lines.append("| --- | " + " | ".join("---:" for _ in cpu) + " | ---: |")
    ours = sum(v for k, v in cpu.items() if k not in ("emulator",))
    lines.append("| | " + " | ".join(f"{v:.2f}" for v in cpu.values()) + f" | {ours:.2f} |")
    return "\n".join(lines)


def main() -> int:
    from harness import argument_parser, run_bench, start_broker, start_services

    parser = argument_parser("broker_counts.py", __doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--session", action="store_true", help="every chat in one session")
    parser.add_argument(
        "--store",
        action="store_true",
        help="run the session store (as make run does) even for chats without a session",
    )
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=20, help="tokens per reply")
    args = parser.parse_args()
    if args.amqp_url:
        parser.error("counts need our own node (no --amqp-url)")

    def body(workdir: Any, cleanup: contextlib.ExitStack) -> dict[str, Any]:
        amqp_url, node = start_broker(cleanup, None)
        stack = start_services(
            cleanup,
            workdir,
            amqp_url,
            node,
            {"token_delay_ms": args.token_delay_ms},
            session_store=args.session or args.store,
        )
        return asyncio.run(_measure(stack, args))

    return run_bench(args, body, _render, lambda result: result)


if __name__ == "__main__":
    sys.exit(main())
