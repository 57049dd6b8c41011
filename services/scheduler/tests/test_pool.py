"""A pool of backend servers under the executor: two emulators in process (Ollama's API, or
only the OpenAI-compatible one for the tests run with both kinds), the broker faked. Each
server runs at most one generation at a time (each emulator's own count of what it ran at
once), both run at the same time, positions hold across the pool, and a server that does not
answer is left for the other with its job, then put back when it answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import aiohttp
import pytest
from prometheus_client import REGISTRY

from corral_emulator import EmulatorConfig, RunningEmulator, expected_reply, running_emulator
from corral_emulator.failures import FailurePlan
from corral_emulator.testing import wait_for_state
from corral_scheduler.backends.base import Backend
from corral_scheduler.backends.ollama import OllamaBackend
from corral_scheduler.backends.openai_compat import OpenAIBackend
from corral_scheduler.eta import SpeedBook
from corral_scheduler.events import EventSink
from corral_scheduler.executor import Executor
from corral_scheduler.lane import Lane
from corral_scheduler.retries import RetryLimits
from services.scheduler.tests import fakes
from tests.polling import eventually


@dataclass
class Pool:
    executor: Executor
    broker: fakes.FakeBroker
    emulators: dict[str, RunningEmulator]
    settled: fakes.Settled

    @property
    def lane(self) -> Lane:
        return self.executor.lane

    def push(self, rid: str, model: str = "llama3.2", content: str = "hello") -> None:
        payload = {"model": model, "messages": [{"role": "user", "content": content}]}
        self.lane.push(
            fakes.entry(
                fakes.job(rid, model=model, payload=payload),
                fakes.Delivery(self.settled, rid),
                self.lane.connection_epoch,
            )
        )

    def hold(self) -> None:
        for emulator in self.emulators.values():
            emulator.state.gate.hold()

    def release(self) -> None:
        for emulator in self.emulators.values():
            emulator.state.gate.release()

    async def held(self, name: str, count: int) -> None:
        state = self.emulators[name].state
        await wait_for_state(state, lambda: state.gate.waiting == count)


Kind = Literal["ollama", "openai"]
# Failover and the invariant hold whichever kind the servers are.
KINDS = pytest.mark.parametrize("kind", ["ollama", "openai"])


def emulator_config(kind: Kind) -> EmulatorConfig:
    return EmulatorConfig(openai_only=kind == "openai")


def backend_for(kind: Kind, session: aiohttp.ClientSession, url: str) -> Backend:
    if kind == "openai":
        return OpenAIBackend(session, url, connect_timeout_s=2.0, read_timeout_s=30.0)
    return OllamaBackend(session, url, connect_timeout_s=2.0, read_timeout_s=30.0)


@asynccontextmanager
async def pool_of(
    names: Sequence[str], waits: list[float] | None = None, kind: Kind = "ollama"
) -> AsyncIterator[Pool]:
    """An executor over one in-process emulator per name; on leaving, each emulator's own count
    says it never ran two generations at once (the invariant, checked for every test here)."""
    async with AsyncExitStack() as stack:
        emulators = {
            name: await stack.enter_async_context(running_emulator(emulator_config(kind)))
            for name in names
        }
        session = await stack.enter_async_context(aiohttp.ClientSession())
        backends = {name: backend_for(kind, session, emu.url) for name, emu in emulators.items()}
        broker = fakes.FakeBroker()
        executor = Executor(
            Lane(servers=names),
            backends,
            EventSink(broker),  # type: ignore[arg-type]
            SpeedBook(prompt_tokens_per_s=400, eval_tokens_per_s=15, load_ms=0, eval_count=10),
            sleep=fakes.recording(waits if waits is not None else []),
            retry=RetryLimits(max_retries=2, backoff_s=0.1),
        )
        task = asyncio.create_task(executor.run_forever())

        async def every_server_asking() -> bool:
            return all(server.free for server in executor.lane.servers.values())

        try:
            await eventually(every_server_asking, what="every server's loop asking for work")
            pool = Pool(executor, broker, emulators, asyncio.Queue())
            yield pool
            # Whatever the test did, no server ever ran two generations at once.
            each_ran_one_at_a_time(pool)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def each_ran_one_at_a_time(pool: Pool) -> None:
    for name, emulator in pool.emulators.items():
        max_active = emulator.state.stats()["max_active"]
        assert isinstance(max_active, int) and max_active <= 1, f"two at once on {name}"


@KINDS
async def test_two_servers_run_two_generations_at_once_never_two_on_one(kind: Kind) -> None:
    async with pool_of(["x", "y"], kind=kind) as pool:
        pool.hold()
        for rid in ("a", "b", "c", "d"):
            pool.push(rid)
        # One generation on each server, the other two waiting in the lane.
        await pool.held("x", 1)
        await pool.held("y", 1)
        assert {r.entry.request_id for r in pool.lane.running_jobs()} == {"a", "b"}
        assert [(p.entry.request_id, p.position) for p in pool.lane.snapshot()] == [
            ("c", 1),
            ("d", 2),
        ]
        pool.release()
        assert await fakes.settle(pool.settled, 4) == dict.fromkeys("abcd", "ack")
    ran = {name: emu.state.stats()["completed"] for name, emu in pool.emulators.items()}
    assert sum(ran.values()) == 4 and all(ran.values())  # type: ignore[arg-type]
    for rid in "abcd":
        assert pool.broker.final(rid)["text"] == expected_reply("hello")


async def test_a_job_goes_to_the_server_that_holds_its_model() -> None:
    async with pool_of(["x", "y"]) as pool:
        pool.lane.servers["x"].loaded = "llama3.2"
        pool.lane.servers["y"].loaded = "qwen2.5:0.5b"
        pool.push("q", model="qwen2.5:0.5b")
        pool.push("l", model="llama3.2")
        assert await fakes.settle(pool.settled, 2) == {"q": "ack", "l": "ack"}
    assert pool.emulators["y"].state.stats()["loaded"] == ["qwen2.5:0.5b"]
    assert pool.emulators["x"].state.stats()["loaded"] == ["llama3.2:latest"]


def failovers(server: str) -> float:
    value = REGISTRY.get_sample_value("corral_backend_server_failovers_total", {"server": server})
    return value or 0.0


@KINDS
async def test_a_server_that_is_down_is_left_with_its_job_and_put_back_when_it_answers(
    kind: Kind,
) -> None:
    async with pool_of(["x", "y"], kind=kind) as pool:
        x = pool.emulators["x"]
        port = int(x.url.rsplit(":", 1)[1])
        await x.close()  # x is down: every connection refused
        before = failovers("x")
        pool.push("first", content="one")
        pool.push("second", content="two")
        assert await fakes.settle(pool.settled, 2) == {"first": "ack", "second": "ack"}
        # Both answered by y, once each: x refused and left rotation at once (no retries on
        # it, y could take the job), and the client saw one start and one answer.
        assert pool.emulators["y"].state.stats()["completed"] == 2
        assert failovers("x") - before == 1
        assert pool.broker.kinds("first").count("started") == 1
        assert pool.broker.final("first")["text"] == expected_reply("one")
        server = pool.lane.servers["x"]
        assert not server.in_rotation
        # x comes back on its address: its loop's probe puts it in rotation again.
        async with running_emulator(emulator_config(kind), port=port) as revived:

            async def back() -> bool:
                return server.in_rotation and server.free

            await eventually(back, what="x back in rotation")
            pool.emulators["x"] = revived
            pool.lane.servers["y"].loaded = "llama3.2"
            pool.hold()
            pool.push("third")
            pool.push("fourth")
            await pool.held("x", 1)
            pool.release()
            assert await fakes.settle(pool.settled, 2) == {"third": "ack", "fourth": "ack"}


@KINDS
@pytest.mark.parametrize(
    "plan",
    [
        {"mode": "midstream", "after_tokens": 2},  # tokens had reached the client
        {"mode": "500"},  # the server answered with a failure: the job may have run
    ],
)
async def test_a_job_that_may_have_run_is_never_moved_to_another_server(
    plan: dict[str, object], kind: Kind
) -> None:
    async with pool_of(["x", "y"], kind=kind) as pool:
        for emulator in pool.emulators.values():  # whichever server the job goes to
            emulator.state.failures.add(FailurePlan.from_mapping(plan))
        before = failovers("x") + failovers("y")
        pool.push("once", content="one two three four five")
        assert await fakes.settle(pool.settled, 1) == {"once": "ack"}
        assert pool.broker.final("once")["kind"] == "error"
        # One attempt on one server; no server left rotation, nothing was moved.
        stats = [emulator.state.stats() for emulator in pool.emulators.values()]
        assert sum(int(s["failures_injected"]) for s in stats) == 1  # type: ignore[call-overload]
        assert sum(int(s["completed"]) for s in stats) == 0  # type: ignore[call-overload]
        assert all(server.in_rotation for server in pool.lane.servers.values())
        assert failovers("x") + failovers("y") == before


@KINDS
async def test_with_every_other_server_down_a_job_is_retried_in_place(kind: Kind) -> None:
    waits: list[float] = []
    async with pool_of(["x", "y"], waits, kind) as pool:
        for emulator in pool.emulators.values():
            emulator.state.failures.add(FailurePlan.from_mapping({"mode": "refuse", "count": -1}))
        pool.push("doomed")
        assert await fakes.settle(pool.settled, 1) == {"doomed": "ack"}
        final = pool.broker.final("doomed")
        assert (final["kind"], final["status"]) == ("error", 503)
        # One server left rotation; the last one in rotation retried the job itself.
        in_rotation = [s.in_rotation for s in pool.lane.servers.values()]
        assert in_rotation.count(True) == 1


@pytest.mark.parametrize("policy", ["affinity", "round_robin"])
async def test_every_policy_keeps_each_server_serial(policy: str) -> None:
    async with pool_of(["x", "y", "z"]) as pool:
        pool.lane.ordering.policy = type(pool.lane.ordering.policy)(pool=policy)  # type: ignore[arg-type]
        models = ["llama3.2", "qwen2.5:0.5b"]
        for i in range(12):
            pool.push(f"j{i}", model=models[i % 2])
        settled = await fakes.settle(pool.settled, 12)
        assert set(settled.values()) == {"ack"}
