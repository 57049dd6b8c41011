"""The fault suite: processes SIGKILLed, the store killed, its disk filled and the broker restarted,
each under a load of session chats (and chats without a session), against one cluster of real
processes: two schedulers (active and standby), a model manager, a session store and a gateway,
on a RabbitMQ node and a SecantusDB of this module's own (it kills and restarts both), in front
of the session's Ollama emulator.

After every fault it asserts:
- every client gets an answer or a clean error within `CLIENT_BOUND_S`: an Ollama `{"error"}`
  body, or a stream ending in an `{"error"}` line; never a hang, a cut connection, a truncated
  stream or a stack trace;
- every answered session chat's turn is in the store's `turns` collection exactly once and whole
  (the request's own question and answer), no failed chat left half a turn, and no turn number
  is used twice in a session (checked in MongoDB directly);
- the lane resumes within a bound (the first answer after the fault), and the backend never ran
  two generations at once.

The figures (clients, turns checked, recovery times) are printed as `[faults]` lines (`-s`) and
recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from corral_devstack.cluster import Cluster
from corral_devstack.mongo import SecantusNode
from corral_devstack.rabbitmq import RabbitNode
from corral_emulator import EmulatorControl, expected_reply
from tests.e2e.test_broker_faults import parse_lines, ready_status, wait_ready
from tests.e2e.test_failover import running_on
from tests.fixtures import Emulator, start_cluster
from tests.polling import eventually

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MODEL = "llama3.2"
# Every client's answer or error arrives within this: it bounds a hang, not a budget.
CLIENT_BOUND_S = 60.0
# The lane answers again within this after a fault (the standby's takeover, a restart).
RESUME_S = 30.0
# Services and stores are ready again within this after a restart.
RECOVERY_S = 45.0
# Answered turns reach the store within this once it can write (the turns queue is durable).
TURNS_S = 45.0
SCHEDULERS = ("scheduler", "scheduler-2")
# The small disk the store lives on for the full-disk case: room for SecantusDB's files
# (about 11 MB fresh) and the module's turns, little enough to fill in a moment.
DISK_MB = 64
ENV = {
    "CORRAL_HEARTBEAT_S": "1",
    "CORRAL_STATUS_INTERVAL_S": "0.5",
    "CORRAL_TAKEOVER_GRACE_S": "0.5",
}


# -- the figures reported by every case -----------------------------------------------------


@dataclass
class Figures:
    fault: str
    clients: int = 0
    answered: int = 0
    clean_errors: int = 0
    turns_checked: int = 0
    resumed_in_s: float | None = None
    recovered_in_s: float | None = None
    notes: list[str] = field(default_factory=list)
    # What the clean errors said, by status: the docs list what clients see.
    errors: Counter[str] = field(default_factory=Counter)

    def report(self) -> None:
        parts = [
            f"clients {self.clients}",
            f"answered {self.answered}",
            f"clean errors {self.clean_errors}",
            f"turns checked {self.turns_checked}",
        ]
        if self.resumed_in_s is not None:
            parts.append(f"lane resumed in {self.resumed_in_s:.2f}s")
        if self.recovered_in_s is not None:
            parts.append(f"recovered in {self.recovered_in_s:.2f}s")
        print(f"[faults] {self.fault}: " + ", ".join(parts + self.notes))
        for error, n in self.errors.most_common():
            print(f"[faults]     {n} x {error}")


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One client's request and what it got."""

    content: str
    session_id: str | None
    stream: bool
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    # "hang" (no answer within the bound) or "cut" (connection dropped): never acceptable.
    failure: str | None = None
    finished_at: float = 0.0

    @property
    def done(self) -> bool:
        return bool(self.lines) and self.lines[-1].get("done") is True

    @property
    def error(self) -> str | None:
        if not self.lines:
            return None
        error = self.lines[-1].get("error")
        return error if isinstance(error, str) else None

    @property
    def text(self) -> str:
        return "".join((line.get("message") or {}).get("content") or "" for line in self.lines)

    def describe(self) -> str:
        return (
            f"{self.content!r} (session {self.session_id}, stream {self.stream}, "
            f"request {self.request_id}): status {self.status}, failure {self.failure}, "
            f"lines {self.lines[-3:]}"
        )


async def ask(url: str, outcome: Outcome) -> Outcome:
    headers = {"X-Request-Id": outcome.request_id}
    if outcome.session_id is not None:
        headers["X-Session-Id"] = outcome.session_id
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": outcome.content}],
        "stream": outcome.stream,
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_BOUND_S)) as session,
            session.post(f"{url}/api/chat", data=orjson.dumps(body), headers=headers) as response,
        ):
            outcome.status = response.status
            raw = await response.read()
    except TimeoutError:
        outcome.failure = "hang"
    except aiohttp.ClientError as exc:
        outcome.failure = f"cut: {exc!r}"
    else:
        outcome.lines = parse_lines(raw) if raw.strip() else []
    outcome.finished_at = time.monotonic()
    return outcome


def launch(
    cluster: Cluster, tag: str, *, sessions: int, plain: int, session_count: int = 5
) -> list[asyncio.Task[Outcome]]:
    """`sessions` session chats over `session_count` sessions and `plain` chats without one,
    interleaved, streaming and not."""
    outcomes: list[Outcome] = []
    for i in range(max(sessions, plain)):
        if i < sessions:
            session = f"{tag}-{uuid.uuid4().hex[:6]}-{i % session_count}"
            outcomes.append(Outcome(f"{tag} session chat {i}", session, stream=i % 2 == 0))
        if i < plain:
            outcomes.append(Outcome(f"{tag} plain chat {i}", None, stream=i % 2 == 1))
    return [asyncio.create_task(ask(cluster.gateway_url, o)) for o in outcomes]


async def settle(tasks: list[asyncio.Task[Outcome]]) -> list[Outcome]:
    """Every client finishes within the bound (each has its own timeout; this is a backstop)."""
    _, pending = await asyncio.wait(tasks, timeout=CLIENT_BOUND_S + 10)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} clients still waiting after {CLIENT_BOUND_S + 10}s"
    return [task.result() for task in tasks]


def assert_clean(outcomes: list[Outcome], figures: Figures) -> None:
    """An answer (whole and right) or a clean Ollama error for everyone."""
    broken = []
    for o in outcomes:
        if o.failure is not None or not o.lines:
            broken.append(o)
        elif o.done:
            assert o.status == 200, o.describe()
            assert o.lines[-1].get("done_reason") == "stop", o.describe()
            assert o.text == expected_reply(o.content), f"spliced or cut: {o.describe()}"
            assert all("error" not in line for line in o.lines), o.describe()
        elif o.error:
            assert "Traceback" not in o.error, o.describe()
            assert o.status != 500, f"a 500 is a bug, not a clean error: {o.describe()}"
            # An error after the stream began ends it; before, it is the whole body.
            assert o.status == 200 or len(o.lines) == 1, o.describe()
            assert all(not line.get("done") for line in o.lines[:-1]), o.describe()
        else:
            broken.append(o)
    assert not broken, "clients without an answer or a clean error:\n" + "\n".join(
        o.describe() for o in broken
    )
    figures.clients += len(outcomes)
    figures.answered += sum(o.done for o in outcomes)
    figures.clean_errors += sum(not o.done for o in outcomes)
    figures.errors.update(f"{o.status} {o.error}" for o in outcomes if not o.done)


async def chat_works(cluster: Cluster, content: str, session_id: str | None = None) -> Outcome:
    outcome = await ask(cluster.gateway_url, Outcome(content, session_id, stream=False))
    assert outcome.done, outcome.describe()
    assert outcome.text == expected_reply(content)
    return outcome


async def lane_resumes(cluster: Cluster, outcomes: list[Outcome], since: float, tag: str) -> float:
    """Seconds from the fault (`since`) to the first answer after it: the load's own if any
    came after it, else a probe chat's, which must come within `RESUME_S`."""
    later = [o.finished_at for o in outcomes if o.done and o.finished_at > since]
    if later:
        return min(later) - since
    attempts = iter(range(1_000_000))

    async def answered() -> bool:
        outcome = await ask(
            cluster.gateway_url, Outcome(f"{tag} probe {next(attempts)}", None, stream=False)
        )
        return outcome.done

    await eventually(answered, RESUME_S, f"the lane answering after {tag}")
    return time.monotonic() - since


# -- the store, checked directly -------------------------------------------------------------


async def assert_turns(
    db: AsyncDatabase[dict[str, Any]],
    outcomes: list[Outcome],
    figures: Figures,
    *,
    broker_restarted: bool = False,
) -> None:
    """Every answered session chat stored exactly once and whole; nothing else stored.

    With `broker_restarted`, a session chat whose client was told the broker was lost may be
    stored too, whole and once: its answer was complete and its `done` reached the store's
    durable queue, while the gateway's own queue (exclusive, gone with the node) lost it. The
    turn is kept (never a generated turn lost); its client was told to retry."""
    answered = {o.request_id: o for o in outcomes if o.session_id is not None and o.done}
    unseen = {
        o.request_id: o
        for o in outcomes
        if broker_restarted and o.session_id is not None and not o.done
    }
    others = [
        o.request_id
        for o in outcomes
        if (o.session_id is None or not o.done) and o.request_id not in unseen
    ]

    async def all_stored() -> bool:
        try:
            found = await db.turns.count_documents({"_id": {"$in": list(answered)}})
        except PyMongoError:
            return False
        return found == len(answered)

    await eventually(all_stored, TURNS_S, f"all {len(answered)} answered turns stored")
    async for turn in db.turns.find({"_id": {"$in": list(answered)}}):
        o = answered[turn["_id"]]
        assert turn["session_id"] == o.session_id, turn
        roles = [(m["role"], m["content"]) for m in turn["messages"]]
        assert roles == [("user", o.content), ("assistant", expected_reply(o.content))], turn
    # Turn ids are request ids (the collection's _id), so "at most once" per request holds by
    # construction; what could still go wrong is a turn stored per *attempt* under another id, a
    # failed chat leaving (half) a turn, or a session numbering two turns alike. The sessions are
    # this case's own, so their turns must be exactly the answered chats'.
    sessions = {o.session_id for o in outcomes if o.session_id is not None}
    stored = [
        turn
        async for turn in db.turns.find(
            {"session_id": {"$in": list(sessions)}}, {"_id": 1, "session_id": 1, "seq": 1}
        )
    ]
    extra = {t["_id"] for t in stored} - set(answered)
    assert set(answered) <= {t["_id"] for t in stored}
    assert extra <= set(unseen), f"turns other than the answers: {sorted(extra - set(unseen))}"
    async for turn in db.turns.find({"_id": {"$in": list(extra)}}):
        o = unseen[turn["_id"]]
        roles = [(m["role"], m["content"]) for m in turn["messages"]]
        assert roles == [("user", o.content), ("assistant", expected_reply(o.content))], turn
    numbered = [(t["session_id"], t["seq"]) for t in stored]
    assert len(set(numbered)) == len(numbered), f"a turn number used twice: {sorted(numbered)}"
    half = await db.turns.count_documents({"_id": {"$in": others}})
    assert half == 0, f"{half} turns stored for chats that failed or had no session"
    figures.turns_checked += len(answered) + len(others)


# -- fixtures --------------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A filesystem of `DISK_MB` for the store, or the reason there is none."""

    path: Path
    kind: str | None
    reason: str = ""

    def fill(self) -> Path:
        """Write a file until the filesystem is full; returns it (delete it to free the space)."""
        filler = self.path / "filler"
        chunk = b"\0" * (1 << 20)
        # Unbuffered: a buffered file would fail again when closed, with the last chunk unwritten.
        with filler.open("wb", buffering=0) as fh:
            for size in (1 << 20, 4096, 512):
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(chunk)
        return filler


def _mount_small_disk(mount: Path, image: Path) -> SmallDisk:
    mount.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tmpfs.returncode == 0:
        return SmallDisk(mount, "tmpfs")
    # No tmpfs mounts (not root, a container without CAP_SYS_ADMIN): a loop-mounted ext4 image.
    steps = [
        ["truncate", "-s", f"{DISK_MB}M", str(image)],
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop", str(image), str(mount)],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            done = subprocess.CompletedProcess(step, 127, "", str(exc))
        if done.returncode != 0:
            reason = (
                f"no small filesystem for the full-disk case: `mount -t tmpfs` failed "
                f"({tmpfs.stderr.strip()}) and `{' '.join(step[:2])}` failed "
                f"({done.stderr.strip()})"
            )
            return SmallDisk(mount, None, reason)
    return SmallDisk(mount, "loop ext4")


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    base = tmp_path_factory.mktemp("small-disk")
    disk = _mount_small_disk(base / "mnt", base / "disk.img")
    try:
        yield disk
    finally:
        if disk.kind is not None:
            subprocess.run(["umount", "-l", str(disk.path)], capture_output=True, check=False)


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A RabbitMQ node for this module alone: the broker case restarts it."""
    with RabbitNode() as node:
        yield node


@pytest.fixture(scope="module")
def store(
    small_disk: SmallDisk, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecantusNode]:
    """SecantusDB on the small disk (on an ordinary directory if there is none): the cases kill,
    fill and restart it, so it is this module's own, with its data on disk."""
    logs = tmp_path_factory.mktemp("store-logs")
    where = small_disk.path if small_disk.kind is not None else logs
    node = SecantusNode(where / "mongo", log_path=logs / "mongo.log")
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def fault_cluster(
    node: RabbitNode,
    store: SecantusNode,
    emulator: Emulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    cluster = start_cluster(
        node.url, emulator.url, tmp_path_factory.mktemp("faults"), mongo_url=store.url, **ENV
    )
    try:
        cluster.start_scheduler("scheduler-2")
        yield cluster
    finally:
        cluster.stop_all()


def database_name(cluster: Cluster) -> str:
    return cluster.services["session-store"].env["CORRAL_MONGO_DATABASE"]


@pytest.fixture
async def db(
    store: SecantusNode, fault_cluster: Cluster
) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        store.url, serverSelectionTimeoutMS=2000
    )
    try:
        yield client[database_name(fault_cluster)]
    finally:
        await client.close()


async def all_ready(cluster: Cluster) -> float:
    async def probe() -> bool:
        statuses = await asyncio.gather(
            *(ready_status(p.ready_url) for p in cluster.services.values() if p.ready_url)
        )
        return all(status == 200 for status in statuses)

    return await eventually(probe, RECOVERY_S, "every service ready")


@pytest.fixture
async def cluster(
    node: RabbitNode, store: SecantusNode, fault_cluster: Cluster, emu: EmulatorControl
) -> AsyncIterator[Cluster]:
    """The module's cluster, every part running and ready at the start of each case, and put
    back together (as `make run`'s supervisor would) after it."""
    await emu.configure(token_delay_ms=15)
    await all_ready(fault_cluster)
    yield fault_cluster
    await emu.release()
    if not node.running:
        await asyncio.to_thread(node.start)
    if not store.running:
        await asyncio.to_thread(store.start)
    for name, proc in fault_cluster.services.items():
        if not proc.running:
            await asyncio.to_thread(fault_cluster.revive, name)
    await all_ready(fault_cluster)


async def scheduler_health(cluster: Cluster, name: str) -> dict[str, Any]:
    url = cluster.services[name].ready_url
    assert url is not None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
        session.get(url.removesuffix("/ready") + "/health") as response,
    ):
        health: dict[str, Any] = await response.json()
        return health


async def store_health(cluster: Cluster) -> dict[str, Any] | None:
    url = cluster.services["session-store"].ready_url
    assert url is not None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url.removesuffix("/ready") + "/health") as response,
        ):
            health: dict[str, Any] = await response.json()
            return health
    except (aiohttp.ClientError, TimeoutError):
        return None


async def first_answers(tasks: list[asyncio.Task[Outcome]], n: int) -> None:
    """Until `n` clients have their answer: the fault then strikes mid-load."""

    async def enough() -> bool:
        return sum(t.done() and t.result().done for t in tasks) >= n

    await eventually(enough, CLIENT_BOUND_S, f"{n} answers before the fault")


# -- the cases -------------------------------------------------------------------------------


async def test_active_scheduler_killed_with_20_queued_session_chats(
    cluster: Cluster, emu: EmulatorControl, db: AsyncDatabase[dict[str, Any]]
) -> None:
    figures = Figures("active scheduler SIGKILLed, 20 session chats queued")
    await emu.hold()
    holder = [asyncio.create_task(ask(cluster.gateway_url, Outcome("holder", "held", False)))]
    await emu.wait(held=1)
    queued = launch(cluster, "failover", sessions=20, plain=0)
    active = await running_on(cluster)

    async def all_queued() -> bool:
        health = await scheduler_health(cluster, active)
        return bool(health["queue"]["waiting"] >= 20)

    await eventually(all_queued, RESUME_S, "20 chats queued behind the held one")
    killed_at = time.monotonic()
    cluster.kill(active)
    await emu.release()
    outcomes = await settle(holder + queued)
    assert_clean(outcomes, figures)
    # Queued clients had nothing streamed: the standby runs every one of them.
    assert all(o.done for o in outcomes[1:]), [o.describe() for o in outcomes if not o.done]
    figures.resumed_in_s = await lane_resumes(cluster, outcomes, killed_at, "failover")
    revived = time.monotonic()
    await asyncio.to_thread(cluster.revive, active)
    figures.recovered_in_s = time.monotonic() - revived
    await assert_turns(db, outcomes, figures)
    figures.notes.append(f"holder {'retried transparently' if outcomes[0].done else 'error'}")
    assert (await emu.stats())["max_active"] == 1
    await chat_works(cluster, "after the failover")
    figures.report()


async def store_fault_survived(
    cluster: Cluster,
    emu: EmulatorControl,
    db: AsyncDatabase[dict[str, Any]],
    figures: Figures,
    tasks: list[asyncio.Task[Outcome]],
    struck_at: float,
    name: str,
) -> None:
    """After a fault in the session store or its database: every client answered or cleanly
    refused, chats without a session all answered, the lane moving, every turn stored once."""
    outcomes = await settle(tasks)
    assert_clean(outcomes, figures)
    plain = [o for o in outcomes if o.session_id is None]
    assert all(o.done for o in plain), [o.describe() for o in plain if not o.done]
    await all_ready(cluster)
    figures.resumed_in_s = await lane_resumes(cluster, outcomes, struck_at, name)
    await assert_turns(db, outcomes, figures)
    await chat_works(cluster, f"after the {name}", f"{name}-after")
    assert (await emu.stats())["max_active"] == 1
    figures.report()


async def test_session_store_killed_under_session_chats(
    cluster: Cluster, emu: EmulatorControl, db: AsyncDatabase[dict[str, Any]]
) -> None:
    figures = Figures("session store SIGKILLed and restarted under load")
    tasks = launch(cluster, "store-kill", sessions=20, plain=10)
    await first_answers(tasks, 4)
    killed_at = time.monotonic()
    cluster.kill("session-store")
    # Chats already admitted need the store only for their turns (the durable turns queue);
    # these need it for their context while it is down.
    tasks += launch(cluster, "store-down", sessions=10, plain=5)
    await asyncio.to_thread(cluster.revive, "session-store")
    figures.recovered_in_s = time.monotonic() - killed_at
    await store_fault_survived(cluster, emu, db, figures, tasks, killed_at, "store-kill")


async def test_embedded_store_killed_under_session_chats(
    cluster: Cluster,
    store: SecantusNode,
    emu: EmulatorControl,
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    figures = Figures("embedded store (SecantusDB) SIGKILLed and restarted under load")
    tasks = launch(cluster, "mongo-kill", sessions=20, plain=10)
    await first_answers(tasks, 4)
    killed_at = time.monotonic()
    assert store.pid is not None
    os.kill(store.pid, signal.SIGKILL)
    tasks += launch(cluster, "mongo-down", sessions=10, plain=5)
    await asyncio.to_thread(store.restart)
    figures.recovered_in_s = time.monotonic() - killed_at
    await store_fault_survived(cluster, emu, db, figures, tasks, killed_at, "mongo-kill")


async def test_broker_restarted_under_session_chats(
    cluster: Cluster,
    node: RabbitNode,
    emu: EmulatorControl,
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    figures = Figures("broker restarted under load")
    tasks = launch(cluster, "broker", sessions=20, plain=10)
    await first_answers(tasks, 4)
    restarted_at = time.monotonic()
    restarting = asyncio.create_task(asyncio.to_thread(node.restart))
    await wait_ready(cluster, False, RECOVERY_S, "gateway")
    # Clients arriving while the broker is away: refused at once (503), never left waiting.
    tasks += launch(cluster, "broker-down", sessions=6, plain=4)
    await restarting
    back_at = time.monotonic()
    outcomes = await settle(tasks)
    assert_clean(outcomes, figures)
    await wait_ready(cluster, True)
    await all_ready(cluster)
    figures.recovered_in_s = time.monotonic() - restarted_at
    # Answers finishing as the stop began say nothing: the lane counts from the node's return.
    figures.resumed_in_s = await lane_resumes(cluster, outcomes, back_at, "broker restart")
    figures.notes.append(f"node.restart() took {back_at - restarted_at:.2f}s")
    await assert_turns(db, outcomes, figures, broker_restarted=True)
    await chat_works(cluster, "after the broker restart", "broker-after")
    assert (await emu.stats())["max_active"] == 1
    figures.report()


async def test_full_disk_under_the_store(
    cluster: Cluster,
    store: SecantusNode,
    small_disk: SmallDisk,
    emu: EmulatorControl,
    db: AsyncDatabase[dict[str, Any]],
) -> None:
    if small_disk.kind is None:
        pytest.skip(small_disk.reason)
    figures = Figures(f"full disk under the store ({small_disk.kind}, {DISK_MB} MB)")
    before = await settle(launch(cluster, "disk-before", sessions=6, plain=0))
    assert all(o.done for o in before)
    # SecantusDB writes into files it already has (free pages, its preallocated journal) even
    # on a full disk; only a write that needs new space fails, and a failed journal or
    # checkpoint write makes WiredTiger panic: every later operation fails until a restart.
    # So: a collection that exists before the disk fills, then ballast into it until a write
    # fails (creating a collection on the full disk fails alone, without the panic).
    ballast: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        store.url, journal=True, serverSelectionTimeoutMS=2000
    )
    try:
        await ballast["ballast"]["x"].insert_one({"_id": "first"})
        filler = await asyncio.to_thread(small_disk.fill)
        failed = False
        for i in range(4000):
            try:
                await ballast["ballast"]["x"].insert_one({"_id": i, "pad": "b" * 16384})
            except PyMongoError:
                failed = True
                break
        assert failed, "the store took 64 MB on a full disk"
        figures.notes.append(f"the store failed after {i} ballast writes of 16 KB")
    finally:
        await ballast.close()
    full_at = time.monotonic()

    async def store_down() -> bool:
        health = await store_health(cluster)
        if health is None:
            return False
        mongo = health.get("mongo", {})
        return mongo.get("writable", mongo.get("connected")) is False

    figures.notes.append(f"reported down in {await eventually(store_down, 20, 'store down'):.2f}s")
    health = await store_health(cluster)
    assert health is not None and health["status"] != "healthy", health
    store_ready = cluster.services["session-store"].ready_url
    assert store_ready is not None
    assert await ready_status(store_ready) == 503
    during = await settle(launch(cluster, "disk-full", sessions=6, plain=6))
    assert_clean(during, figures)
    plain = [o for o in during if o.session_id is None]
    assert all(o.done for o in plain), [o.describe() for o in plain if not o.done]
    session_errors = [o for o in during if o.session_id is not None and not o.done]
    figures.notes.append(f"session chats on the full disk: {len(session_errors)} of 6 errors")

    filler.unlink()
    # A panicked SecantusDB stays up refusing everything: it must be restarted (SIGKILL: its
    # WiredTiger cannot close cleanly; the journal has every acknowledged write).
    assert store.pid is not None
    os.kill(store.pid, signal.SIGKILL)
    await asyncio.to_thread(store.restart)
    await all_ready(cluster)
    figures.recovered_in_s = time.monotonic() - full_at
    after = await settle(launch(cluster, "disk-after", sessions=6, plain=2))
    assert_clean(after, figures)
    assert all(o.done for o in after), [o.describe() for o in after if not o.done]
    await assert_turns(db, before + during + after, figures)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(store.url)
    try:
        await client.drop_database("ballast")
    finally:
        await client.close()
    assert (await emu.stats())["max_active"] == 1
    figures.report()
