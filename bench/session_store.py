"""Session-store speed: context assembly over 10, 100 and 1,000 stored turns, and turns written
per second, against a real MongoDB-protocol server and a real RabbitMQ.

    uv run python bench/session_store.py [--mongo-url URL] [--amqp-url URL] [--repeat N]
        [--events N] [--json OUT]
    uv run python bench/session_store.py --gateway [--amqp-url URL] [--repeat N] [--json OUT]
    uv run python bench/session_store.py --scale [--mongo-url URL] [--repeat N] [--json OUT]

Without --mongo-url it starts a throwaway SecantusDB (in memory); without --amqp-url a
throwaway RabbitMQ node. It runs the session store in-process (the real app: MongoDB, broker,
RPC server, turns consumer) and measures:

- assembly, in-process (`SessionService.assemble`: history read + estimate + truncation) and
  over RPC (`corral.rpc` round trip, what the gateway pays), for a session of 10, 100 and 1,000
  turns, with the default window (4096 tokens: only the newest turns can fit, so only those
  are read) and with `num_ctx` 1,000,000 (every turn fits, so every turn is read);
- turn writes: `SessionStore.write_turn` one after another, 16 at a time over 16 sessions,
  and end to end (`done` events published to `corral.events`, until all are stored).

With --gateway it starts the whole stack as `make run` does (RabbitMQ unless --amqp-url, the
Ollama emulator with no delays, a scheduler, a session store on a SecantusDB of its own and a
gateway), stores 10 and 1,000 turns in two sessions, and times one non-streaming /api/chat
through the gateway, round robin: without a session, in the 10-turn session, in the
1,000-turn session (medians of --repeat each; after each session chat it waits, untimed, for
the turn to be stored, so the next chat does not race the write). The difference between the
last and the first is what a long history costs a turn.

With --scale it measures a turn's write and its next assembly against a store holding 100,
1,000 and 10,000 sessions (made empty, in bulk), in --repeat of them each holding one turn
already: what a turn costs as the number of sessions grows, the database's CPU included when
it is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from pymongo import AsyncMongoClient

from corral_common.broker import Broker, encode
from corral_common.contracts.identity import CounterSpec
from corral_common.contracts.session_store import SESSION_STORE, AssembleParams
from corral_common.ids import new_id
from corral_common.messages import Done
from corral_common.rpc import RpcClient
from corral_common.settings import CorralSettings
from corral_common.topology import TURN_ROUTE, event_key
from corral_devstack.mongo import SecantusNode
from corral_devstack.rabbitmq import RabbitNode
from corral_session_store.app import SERVICE_CORE, STORE, create_app
from corral_session_store.counters import Counters, counter_id, window_start
from corral_session_store.model_info import StaticContextLengths
from corral_session_store.settings import SessionStoreSettings
from corral_session_store.store import Document, SessionStore, TurnRecord, empty_session

MODEL = "llama3.2"
SIZES = (10, 100, 1000)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def turn(session_id: str, n: int) -> TurnRecord:
    # ~60 tokens a turn: a realistic short exchange.
    question = f"Question {n}: " + "how does this part of the system behave? " * 3
    answer = f"Answer {n}: " + "it behaves as the contract describes, step by step. " * 2
    at = T0 + timedelta(seconds=n)
    return TurnRecord(
        request_id=new_id(),
        session_id=session_id,
        model=MODEL,
        kind="chat",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        asked_at=at,
        answered_at=at,
        stats={"prompt_eval_count": 60, "eval_count": 30, "total_duration": 10**9},
    )


def cpu_ms(pid: int | None) -> float | None:
    """CPU time a process has used so far, in ms; None if unknown."""
    from harness import cpu_ns

    return None if pid is None else cpu_ns(pid) / 1e6


async def timed(
    call: Callable[[], Awaitable[Any]], repeat: int, server_pid: int | None = None
) -> dict[str, float]:
    """Wall time per call (median, p90, min), and CPU time per call of this process (the
    store's code when in process) and of the database server when it is ours: CPU time
    hardly depends on what else the machine runs, wall time does."""
    samples = []
    own, server = time.process_time(), cpu_ms(server_pid)
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    own_ms = (time.process_time() - own) * 1000 / repeat
    server_after = cpu_ms(server_pid)
    samples.sort()
    result = {
        "median_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 2),
        "min_ms": round(samples[0], 2),
        "client_cpu_ms": round(own_ms, 2),
    }
    if server is not None and server_after is not None:
        result["server_cpu_ms"] = round((server_after - server) / repeat, 2)
    return result


async def bench(
    mongo_url: str, amqp_url: str, repeat: int, events: int, server_pid: int | None = None
) -> dict[str, Any]:
    database = f"corral_bench_{new_id()[:8]}"
    settings = SessionStoreSettings(
        amqp_url=amqp_url, mongo_url=mongo_url, mongo_database=database, log_level="warning"
    )
    app = create_app(settings, context_lengths=StaticContextLengths({}))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    broker = Broker(CorralSettings(amqp_url=amqp_url), "bench")
    await broker.start()
    rpc = RpcClient(broker, timeout_s=30)
    await rpc.start()
    store: SessionStore = app[STORE]
    service = app[SERVICE_CORE]
    results: dict[str, Any] = {"assemble": {}, "writes": {}}
    try:
        # -- writes, one after another (this also fills the sessions assembly reads) -------
        started = time.perf_counter()
        own, server_cpu = time.process_time(), cpu_ms(server_pid)
        written = 0
        for size in SIZES:
            for n in range(size):
                await store.write_turn(turn(f"s{size}", n))
                written += 1
        elapsed = time.perf_counter() - started
        results["writes"]["sequential_per_s"] = round(written / elapsed, 1)
        results["writes"]["sequential_client_cpu_ms"] = round(
            (time.process_time() - own) * 1000 / written, 2
        )
        server_after = cpu_ms(server_pid)
        if server_cpu is not None and server_after is not None:
            results["writes"]["sequential_server_cpu_ms"] = round(
                (server_after - server_cpu) / written, 2
            )

        # -- writes, 16 sessions at once --------------------------------------------------
        batch = [turn(f"c{i % 16}", i) for i in range(640)]
        started = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def write(record: TurnRecord) -> None:
            async with sem:
                await store.write_turn(record)

        await asyncio.gather(*(write(r) for r in batch))
        results["writes"]["concurrent_16_per_s"] = round(
            len(batch) / (time.perf_counter() - started), 1
        )

        # -- writes end to end: done events through RabbitMQ and the consumer --------------
        before = await store.turns.count_documents({})
        dones = [
            Done(
                request_id=new_id(),
                token_batches=1,
                final={"done": True, "prompt_eval_count": 10, "eval_count": 5},
                text="answer",
                waited_ms=0,
                model=MODEL,
                session_id=f"e{i % 16}",
                turn=[{"role": "user", "content": f"question {i}"}],
            )
            for i in range(events)
        ]
        started = time.perf_counter()
        for done in dones:
            await broker.publish_event(
                event_key("bench", done.request_id, TURN_ROUTE), encode(done), durable=True
            )
        published = time.perf_counter() - started
        while True:
            if await store.turns.count_documents({}) >= before + events:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        results["writes"]["end_to_end_per_s"] = round(events / elapsed, 1)
        results["writes"]["end_to_end_publish_per_s"] = round(events / published, 1)

        # -- assembly ----------------------------------------------------------------------
        message = [{"role": "user", "content": "And what happens next?"}]
        for size in SIZES:
            row: dict[str, Any] = {}
            for label, options in (("default_window", {}), ("all_history", {"num_ctx": 10**6})):

                async def local(options: dict[str, Any] = options, size: int = size) -> Any:
                    return await service.assemble(
                        session_id=f"s{size}",
                        model=MODEL,
                        kind="chat",
                        messages=message,
                        options=options,
                        owner=None,
                    )

                async def remote(options: dict[str, Any] = options, size: int = size) -> Any:
                    params = AssembleParams(
                        session_id=f"s{size}", model=MODEL, messages=message, options=options
                    )
                    return await rpc.call(SESSION_STORE.assemble, params)

                info = (await local())["context_info"]
                row[label] = {
                    "in_process": await timed(local, repeat, server_pid),
                    "over_rpc": await timed(remote, repeat, server_pid),
                    "turns_used": size - info["turns_dropped"],
                    "tokens_used": info["tokens_used"],
                }
            results["assemble"][str(size)] = row
    finally:
        await rpc.close()
        await broker.close()
        await server.close()
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url)
        await client.drop_database(database)
        await client.close()
    return results


# -- as the sessions grow in number ---------------------------------------------------------

SCALE_SIZES = (100, 1_000, 10_000)


async def scale_bench(mongo_url: str, repeat: int, server_pid: int | None) -> dict[str, Any]:
    """A session's second turn's write (as the turns consumer makes it: a first delivery, not
    looked up first) and the assembly of its next chat, in `repeat` sessions of a store holding
    each of SCALE_SIZES sessions."""
    database = f"corral_bench_{new_id()[:8]}"
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_url, tz_aware=True)
    settings = SessionStoreSettings(mongo_url=mongo_url, mongo_database=database)
    store = SessionStore(client[database])
    await store.ensure_indexes()
    from corral_session_store.sessions import SessionService

    service = SessionService(store, StaticContextLengths({}), settings)
    counters = Counters(client[database])
    await counters.ensure_indexes()
    message = [{"role": "user", "content": "And what happens next?"}]
    results: dict[str, Any] = {}
    try:
        made = 0
        for size in SCALE_SIZES:
            now = datetime.now(UTC)
            while made < size:
                batch = range(made, min(size, made + 1000))
                await store.sessions.insert_many(
                    [empty_session(f"n{i}", None, None, now) for i in batch]
                )
                made = batch[-1] + 1
            # Each timed turn goes to a session of its own, spread over the store, after a
            # first turn there (untimed: a first turn also names its session).
            names = [f"n{(i * size) // repeat}" for i in range(repeat)]
            for name in names:
                await store.write_turn(turn(name, 1), look_first=False)
            left = iter(names)

            async def write(left: Any = left) -> Any:
                return await store.write_turn(turn(next(left), 2), look_first=False)

            again = iter(names)

            async def assemble(again: Any = again) -> Any:
                return await service.assemble(
                    session_id=next(again),
                    model=MODEL,
                    kind="chat",
                    messages=message,
                    options={},
                    owner=None,
                )

            results[str(size)] = {
                "write": await timed(write, repeat, server_pid),
                "assemble": await timed(assemble, repeat, server_pid),
                "rate_count": await rate_counts(counters, size, repeat, server_pid),
            }
    finally:
        await client.drop_database(database)
        await client.close()
    return results


async def rate_counts(
    counters: Counters, size: int, repeat: int, server_pid: int | None
) -> dict[str, float]:
    """One request counted (a caller's requests per minute, as a gateway's sync or a window's
    first request does) in a store holding `size` counters of other callers."""
    spec = CounterSpec(name="requests", window_s=60, add=1)
    now = time.time()
    start = window_start(now, spec.window_s)
    have = await counters.counters.count_documents({})
    for first in range(have, size, 1000):
        await counters.counters.insert_many(
            [
                {
                    "_id": counter_id(f"ip:{i}", spec.name, start),
                    "subject": f"ip:{i}",
                    "name": spec.name,
                    "window_start": start,
                    "window_s": spec.window_s,
                    "count": 1,
                    "recent": [],
                    "expires_at": datetime.fromtimestamp(start + 2 * spec.window_s, UTC),
                }
                for i in range(first, min(size, first + 1000))
            ]
        )
    callers = iter(f"ip:{(i * size) // repeat}" for i in range(repeat))

    async def count() -> Any:
        return await counters.count(next(callers), [spec], now)

    return await timed(count, repeat, server_pid)


def scale_main(args: argparse.Namespace) -> int:
    mongo = None if args.mongo_url else SecantusNode()
    try:
        if mongo is not None:
            mongo.start()
        mongo_url = args.mongo_url or (mongo.url if mongo else "")
        server_pid = mongo.pid if mongo is not None else None
        results = asyncio.run(scale_bench(mongo_url, args.repeat, server_pid))
    finally:
        if mongo is not None:
            mongo.close()
    return report(args, mongo is not None, {"load": os.getloadavg(), "sessions": results})


def report(args: argparse.Namespace, own_mongo: bool, results: dict[str, Any]) -> int:
    """The results as JSON, printed and (with --json) written."""
    text = json.dumps(
        {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "server": "secantusdb (in memory)" if own_mongo else "given --mongo-url",
            **results,
        },
        indent=2,
    )
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


# -- through the gateway ----------------------------------------------------------------------

GATEWAY_SESSIONS = {"none": 0, "short": 10, "long": 1000}


async def gateway_bench(stack: Any, repeat: int, settle: bool = True) -> dict[str, Any]:
    """One chat at a time through the gateway of `stack` (bench/harness.py's `Stack`, with a
    session store), without a session and in sessions of 10 and 1,000 stored turns. With
    `settle`, each session chat is followed (untimed) by a wait until its turn is stored; without,
    the next chat goes at once (a client that answers at once: a turn still being written is
    then waited for by the next chat on its session)."""
    from harness import cpu_ns

    client: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongo.url, tz_aware=True)
    store = SessionStore(client[SessionStoreSettings().mongo_database])
    await store.ensure_indexes()
    samples: dict[str, list[float]] = {name: [] for name in GATEWAY_SESSIONS}
    # CPU each process spent on a chat (its write included), by kind of chat.
    pids: dict[str, list[int]] = stack.pids()
    cpu: dict[str, dict[str, list[float]]] = {name: {} for name in GATEWAY_SESSIONS}
    url = f"{stack.gateway_url}/api/chat"
    try:
        for name, size in GATEWAY_SESSIONS.items():
            for n in range(size):
                await store.write_turn(turn(name, n))

        async def last_seq(name: str) -> int:
            """The session's last turn number (one document read: counting its turns would
            scan them, and load the server this measures)."""
            session = await store.sessions.find_one({"_id": name}, {"turn_seq": 1})
            return int(session["turn_seq"]) if session else 0

        async def stored_after(name: str, seq: int) -> bool:
            query = {"session_id": name, "seq": {"$gt": seq}}
            return await store.turns.find_one(query, {"_id": 1}) is not None

        async with aiohttp.ClientSession() as http:

            async def chat(name: str, n: int, keep: bool = False) -> float:
                body: dict[str, Any] = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"q{n} and what happens next?"}],
                    "stream": False,
                }
                if name != "none":
                    body["session_id"] = name
                before = await last_seq(name) if name != "none" else 0
                cpu_before = {process: cpu_ns(*group) for process, group in pids.items()}
                started = time.perf_counter()
                async with http.post(url, json=body) as response:
                    answer = await response.json()
                took = (time.perf_counter() - started) * 1000
                if response.status != 200 or not answer.get("done"):
                    raise RuntimeError(f"chat in {name!r} failed: {response.status} {answer}")
                if name != "none" and settle:
                    # The turn is written just after the answer (earlier versions answered once
                    # it was): looked for after a pause, so both read about once.
                    await asyncio.sleep(0.02)
                    while True:
                        if await stored_after(name, before):
                            break
                        await asyncio.sleep(0.005)
                if keep:
                    for process, group in pids.items():
                        used_ms = (cpu_ns(*group) - cpu_before[process]) / 1e6
                        cpu[name].setdefault(process, []).append(used_ms)
                return took

            names = list(GATEWAY_SESSIONS)
            for n in range(5):  # warm-up: connections, the model, the estimator
                for name in names:
                    await chat(name, n)
            for n in range(repeat):
                # Round robin, rotated each round, so a noisy moment lands on every kind.
                shift = n % len(names)
                for name in names[shift:] + names[:shift]:
                    samples[name].append(await chat(name, n, keep=True))
    finally:
        await client.close()
    medians = {name: round(statistics.median(values), 2) for name, values in samples.items()}
    return {
        "repeat": repeat,
        "settle": settle,
        "median_ms": medians,
        "p90_ms": {
            name: round(sorted(values)[int(len(values) * 0.9) - 1], 2)
            for name, values in samples.items()
        },
        "added_by_long_history_ms": round(medians["long"] - medians["none"], 2),
        "added_by_short_history_ms": round(medians["short"] - medians["none"], 2),
        # Mean CPU per chat (ms) of each process, by kind of chat (clock ticks: 10 ms each,
        # so only a mean over many chats says anything).
        "cpu_ms_per_chat": {
            name: {process: round(statistics.mean(v), 2) for process, v in sorted(by.items())}
            for name, by in cpu.items()
        },
        "samples_ms": {name: [round(v, 2) for v in values] for name, values in samples.items()},
    }


def gateway_main(args: argparse.Namespace) -> int:
    # bench/harness.py starts and stops the stack (as the other cluster benchmarks do).
    import contextlib
    from pathlib import Path

    from harness import run_bench, start_broker, start_services

    def body(workdir: Path, cleanup: contextlib.ExitStack) -> dict[str, Any]:
        amqp_url, node = start_broker(cleanup, args.amqp_url)
        stack = start_services(cleanup, workdir, amqp_url, node, {}, session_store=True)
        return asyncio.run(gateway_bench(stack, args.repeat, settle=not args.no_settle))

    def render(result: dict[str, Any]) -> str:
        shown = {key: value for key, value in result.items() if key != "samples_ms"}
        return json.dumps({"load": os.getloadavg(), **shown}, indent=2)

    args.json = Path(args.json) if args.json else None
    return run_bench(args, body, render, lambda result: result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mongo-url")
    parser.add_argument("--amqp-url")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="with --gateway: send the next chat at once, without waiting for the turn's write",
    )
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--json")
    parser.add_argument(
        "--gateway", action="store_true", help="time chats through a whole stack instead"
    )
    parser.add_argument(
        "--scale", action="store_true", help="time a turn's write as the sessions stored grow"
    )
    args = parser.parse_args()
    if args.gateway:
        return gateway_main(args)
    if args.scale:
        return scale_main(args)
    mongo = None if args.mongo_url else SecantusNode()
    rabbit = None if args.amqp_url else RabbitNode()
    try:
        if mongo is not None:
            mongo.start()
        if rabbit is not None:
            rabbit.start()
        mongo_url = args.mongo_url or (mongo.url if mongo else "")
        amqp_url = args.amqp_url or (rabbit.url if rabbit else "")
        server_pid = mongo.pid if mongo is not None else None
        results = asyncio.run(bench(mongo_url, amqp_url, args.repeat, args.events, server_pid))
    finally:
        if rabbit is not None:
            rabbit.close()
        if mongo is not None:
            mongo.close()
    return report(args, mongo is not None, results)


if __name__ == "__main__":
    sys.exit(main())
