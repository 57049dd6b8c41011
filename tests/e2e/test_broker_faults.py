"""Broker faults: the gateway and the scheduler survive RabbitMQ going away and coming back.

These tests run a RabbitMQ node of their own (never the system broker nor the session's shared
node, since they stop it), a scheduler and a gateway as real processes, and the session's Ollama
emulator. While the broker is down new requests get a prompt 503 and requests in flight end with
an error instead of hanging; once it is back the services re-declare the topology and their own
queues, resume consuming, and requests work end to end again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from corral_devstack.cluster import Cluster
from corral_devstack.rabbitmq import RabbitNode
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import Emulator, start_cluster
from tests.polling import eventually

pytestmark = [pytest.mark.broker_restart, pytest.mark.e2e]

MODEL = "llama3.2"
# The longest a request may take to be refused while the broker is down: "promptly", with room
# for a loaded CI machine, and far below anything a client would call a hang.
REFUSAL_TIMEOUT_S = 3.0
# How long the services get to be ready again once the broker is back (reconnect interval 1 s,
# plus restoring channels, queues, bindings and consumers).
RECOVERY_TIMEOUT_S = 30.0
# A successful chat over the emulator takes milliseconds; this bounds a hang, not a budget.
CHAT_TIMEOUT_S = 15.0


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A RabbitMQ node for this module alone: the tests stop, restart and wipe it."""
    with RabbitNode() as node:
        yield node


@pytest.fixture(scope="module")
def fault_cluster(
    node: RabbitNode, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    cluster = start_cluster(
        node.url,
        emulator.url,
        tmp_path_factory.mktemp("broker-faults"),
        CORRAL_HEARTBEAT_S="1",
        CORRAL_STATUS_INTERVAL_S="0.5",
    )
    yield cluster
    cluster.stop_all()


@pytest.fixture
async def cluster(
    node: RabbitNode, fault_cluster: Cluster, emu: EmulatorControl
) -> AsyncIterator[Cluster]:
    """The module's cluster, ready at the start of each test and left with the broker up."""
    await wait_ready(fault_cluster, True)
    yield fault_cluster
    await emu.release()
    if not node.running:
        await asyncio.to_thread(node.start)
    await wait_ready(fault_cluster, True)


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    lines: list[dict[str, Any]]
    # From the request being sent until the whole answer was read.
    seconds: float

    @property
    def text(self) -> str:
        return "".join(line.get("message", {}).get("content", "") for line in self.lines)

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1]


def parse_lines(raw: bytes) -> list[dict[str, Any]]:
    """An NDJSON stream (no blank lines) or a single JSON object."""
    parts = raw.rstrip(b"\n").split(b"\n")
    assert all(parts), f"blank line in {raw!r}"
    return [orjson.loads(part) for part in parts]


async def chat(
    cluster: Cluster, content: str, *, timeout_s: float = CHAT_TIMEOUT_S, stream: bool = True
) -> Answer:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream}
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.post(f"{cluster.gateway_url}/api/chat", data=orjson.dumps(body)) as response,
    ):
        raw = await response.read()
        return Answer(
            response.status,
            CIMultiDict(response.headers),
            parse_lines(raw),
            time.monotonic() - started,
        )


async def assert_chat_works(cluster: Cluster, content: str) -> Answer:
    answer = await chat(cluster, content)
    assert answer.status == 200, answer.lines
    assert answer.last.get("done") is True, answer.lines
    assert answer.last["done_reason"] == "stop"
    assert answer.text == expected_reply(content)
    return answer


def assert_broker_down_refusal(answer: Answer, *, retry_after: bool = True) -> None:
    assert answer.status == 503, answer.lines
    assert answer.headers["Content-Type"].startswith("application/json")
    assert len(answer.lines) == 1
    assert isinstance(answer.last.get("error"), str) and answer.last["error"], answer.lines
    assert "broker" in answer.last["error"]
    if retry_after:
        assert int(answer.headers["Retry-After"]) >= 1


async def ready_status(url: str) -> int | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(url) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def ready_urls(cluster: Cluster) -> dict[str, str]:
    urls = {"gateway": f"{cluster.gateway_url}/ready"}
    scheduler_ready = cluster.services["scheduler"].ready_url
    assert scheduler_ready is not None
    urls["scheduler"] = scheduler_ready
    return urls


async def wait_ready(
    cluster: Cluster, ready: bool, within_s: float = RECOVERY_TIMEOUT_S, only: str | None = None
) -> float:
    """Wait until the services' /ready answers 200 (`ready`) or 503 (not ready)."""
    wanted = 200 if ready else 503
    urls = {name: url for name, url in ready_urls(cluster).items() if only in (None, name)}

    async def probe() -> bool:
        statuses = await asyncio.gather(*(ready_status(url) for url in urls.values()))
        return all(status == wanted for status in statuses)

    state = "ready" if ready else "not ready"
    return await eventually(probe, within_s, f"{', '.join(urls)} {state}")


async def gateway_health(cluster: Cluster) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
        session.get(f"{cluster.gateway_url}/health") as response,
    ):
        health: dict[str, Any] = await response.json()
        return health


async def wait_healthy(cluster: Cluster, within_s: float = 10) -> float:
    """Until the gateway reports healthy again: the scheduler's status broadcasts reach it, so
    the status binding of the gateway's (re-declared) queue is back too."""

    async def probe() -> bool:
        health = await gateway_health(cluster)
        return bool(health["status"] == "healthy" and health["schedulers"] == 1)

    return await eventually(probe, within_s, "gateway /health healthy")


def assert_services_alive(cluster: Cluster) -> None:
    for name in ("gateway", "scheduler"):
        service = cluster.services[name]
        assert service.running, f"{name} died: {service.log_tail(40)}"


async def scheduler_counter(cluster: Cluster, metric: str, label: str) -> dict[str, float]:
    """One labelled counter from the scheduler's /metrics, by the value of `label`."""
    url = ready_urls(cluster)["scheduler"].removesuffix("/ready") + "/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    prefix = f'{metric}{{{label}="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def assert_no_job_broke(cluster: Cluster) -> None:
    """Jobs handed out again after a reconnect run like any other: none may fail inside the
    scheduler (say, publishing its events before the connection is fully restored)."""
    outcomes = await scheduler_counter(cluster, "corral_jobs_total", "outcome")
    if outcomes.get("internal_error", 0):
        log = cluster.services["scheduler"].log_path.read_text().splitlines()
        failures = "\n".join(line for line in log if "job failed" in line)
        raise AssertionError(f"jobs failed in the scheduler ({outcomes}):\n{failures}")


def report(label: str, seconds: float) -> None:
    print(f"[broker faults] {label}: {seconds * 1000:.0f} ms")


# -- tests -----------------------------------------------------------------------------------


async def test_broker_stop_gives_503_and_start_recovers(
    cluster: Cluster, node: RabbitNode, emu: EmulatorControl
) -> None:
    await assert_chat_works(cluster, "before the outage")

    stop_started = time.monotonic()
    await asyncio.to_thread(node.stop)
    report("node.stop() took", time.monotonic() - stop_started)
    # The connection close reaches the services while the node shuts down, so by now (or a
    # moment later) neither is ready.
    report("stop returned -> gateway /ready 503", await wait_ready(cluster, False, 5, "gateway"))
    await wait_ready(cluster, False, 5)

    for stream in (True, False):
        answer = await chat(
            cluster, "during the outage", timeout_s=REFUSAL_TIMEOUT_S, stream=stream
        )
        assert_broker_down_refusal(answer)
        report(f"broker down -> 503 (stream={stream})", answer.seconds)
    assert_services_alive(cluster)
    assert (await emu.stats())["generations"] == 1, "nothing may reach the backend while down"

    start_started = time.monotonic()
    await asyncio.to_thread(node.start)
    report("node.start() took", time.monotonic() - start_started)
    report("start returned -> services ready", await wait_ready(cluster, True))
    report("ready -> gateway /health healthy", await wait_healthy(cluster))

    after = await assert_chat_works(cluster, "after the outage")
    report("first chat after recovery", after.seconds)
    assert_services_alive(cluster)
    stats = await emu.stats()
    assert stats["completed"] == 2
    assert stats["max_active"] == 1


async def test_request_in_flight_fails_cleanly_and_lane_stays_serial(
    cluster: Cluster, node: RabbitNode, emu: EmulatorControl
) -> None:
    await emu.hold()
    # A is running (held at the backend before its first token, so nothing is written to its
    # client yet); B waits behind it and its stream has started with a queue chunk.
    running = asyncio.create_task(chat(cluster, "running when the broker died", stream=True))
    await emu.wait(held=1)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=CHAT_TIMEOUT_S)
    ) as session:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "queued behind it"}]}
        async with session.post(
            f"{cluster.gateway_url}/api/chat", data=orjson.dumps(body)
        ) as queued:
            assert queued.status == 200
            first = orjson.loads(await queued.content.readline())
            assert first["queue_info"]["position"] == 1, first

            stop_started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(node.stop))
            running_answer = await asyncio.wait_for(running, REFUSAL_TIMEOUT_S + 10)
            report("broker stop -> running request answered", time.monotonic() - stop_started)
            rest = await asyncio.wait_for(queued.read(), REFUSAL_TIMEOUT_S + 10)
            report("broker stop -> queued stream ended", time.monotonic() - stop_started)
            await stopping

    # Nothing had been written for A: its status still says what happened.
    assert_broker_down_refusal(running_answer)
    # B's stream had begun: it ends with an error line, as Ollama ends a failed stream.
    queued_lines = parse_lines(rest)
    assert queued_lines, "the queued stream ended without a final line"
    assert set(queued_lines[-1]) == {"error"}, queued_lines
    assert "broker" in queued_lines[-1]["error"]
    assert all(not line.get("done") for line in queued_lines[:-1])

    # The scheduler aborts the generation it can no longer report or ack (hold still on).
    await emu.wait(within_s=10, active="eq:0", held="eq:0", cancelled=1)
    assert_services_alive(cluster)

    await emu.release()
    await asyncio.to_thread(node.start)
    report("start returned -> services ready", await wait_ready(cluster, True))
    # A and B were unacked when the connection dropped, so the broker hands them out again.
    # Their clients already had an error, so the gateway cancels them when their events show
    # up: the one that starts at once is cut off, the one queued behind it never runs.
    await assert_chat_works(cluster, "after the outage")
    stats = await emu.stats()
    assert stats["max_active"] == 1, stats
    prompts = [body["messages"][-1]["content"] for body in await emu.requests("chat")]
    assert prompts.count("running when the broker died") + prompts.count("queued behind it") <= 3
    assert stats["completed"] <= 2, stats  # only "after the outage" (and at most one stray)
    assert_services_alive(cluster)
    await assert_no_job_broke(cluster)


async def test_node_restart_recovers(
    cluster: Cluster, node: RabbitNode, emu: EmulatorControl
) -> None:
    """`restart()` is stop-then-start in one call: requests made while it runs are refused
    promptly, and the services come back without help."""
    await assert_chat_works(cluster, "before the restart")
    restart_started = time.monotonic()
    restarting = asyncio.create_task(asyncio.to_thread(node.restart))
    report(
        "restart begun -> gateway /ready 503",
        await wait_ready(cluster, False, RECOVERY_TIMEOUT_S, "gateway"),
    )
    answer = await chat(cluster, "during the restart", timeout_s=REFUSAL_TIMEOUT_S)
    assert not restarting.done(), "the node came back before the refusal could be checked"
    assert_broker_down_refusal(answer)
    report("broker down -> 503", answer.seconds)
    await restarting
    report("node.restart() took", time.monotonic() - restart_started)
    report("restart returned -> services ready", await wait_ready(cluster, True))
    await assert_chat_works(cluster, "after the restart")
    assert_services_alive(cluster)
    assert (await emu.stats())["max_active"] == 1


async def test_broker_that_lost_its_data_gets_the_topology_again(
    cluster: Cluster, node: RabbitNode, emu: EmulatorControl
) -> None:
    """A node that comes back empty (a replaced broker, a container without its volume): only
    re-declaration by the services brings back exchanges, the jobs queue and their bindings."""
    await assert_chat_works(cluster, "before the wipe")
    await asyncio.to_thread(node.stop)
    shutil.rmtree(node.base_dir / "mnesia")
    await asyncio.to_thread(node.start)
    report("wiped node started -> services ready", await wait_ready(cluster, True))
    await wait_healthy(cluster)
    await assert_chat_works(cluster, "after the wipe")

    # The control path is back as well: a client leaving the queue cancels its job.
    async def queued_cancels() -> float:
        by_stage = await scheduler_counter(cluster, "corral_cancellations_total", "stage")
        return by_stage.get("queued", 0)

    cancels_before = await queued_cancels()
    await emu.hold()
    running = asyncio.create_task(chat(cluster, "holding the lane"))
    await emu.wait(held=1)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=CHAT_TIMEOUT_S)
    ) as session:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "leaves the queue"}]}
        async with session.post(f"{cluster.gateway_url}/api/chat", data=orjson.dumps(body)) as left:
            first = orjson.loads(await left.content.readline())
            assert first["queue_info"]["position"] == 1, first

    async def cancelled_in_lane() -> bool:
        return await queued_cancels() > cancels_before

    await eventually(cancelled_in_lane, 10, "the scheduler cancelling the abandoned job")
    await emu.release()
    answer = await asyncio.wait_for(running, CHAT_TIMEOUT_S)
    assert answer.text == expected_reply("holding the lane")
    # The lane is FIFO: had the abandoned job stayed in it, it would run before this one.
    await assert_chat_works(cluster, "after the abandoned one")
    sent = [body["messages"][-1]["content"] for body in await emu.requests("chat")]
    assert "leaves the queue" not in sent, sent
    assert_services_alive(cluster)
    assert (await emu.stats())["max_active"] == 1
    await assert_no_job_broke(cluster)
