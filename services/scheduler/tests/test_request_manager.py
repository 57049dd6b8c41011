"""The request manager (retries of a backend that is not ready, per-request deadlines) in the
lane: the executor, its real Ollama client and the Ollama emulator in process (the broker
faked). A backend that refuses or is busy before answering is
retried with backoff (shown by the emulator's count of failed attempts, the waits the executor
asked for and the metric, never by timing); what may have started is never retried; and a
request's total deadline stops its generation and frees the lane for the next job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from corral_devstack.ports import free_port
from corral_emulator import RunningEmulator, expected_reply, running_emulator
from corral_emulator.failures import FailurePlan
from corral_emulator.testing import wait_for_state
from corral_scheduler.backends.ollama import OllamaBackend
from corral_scheduler.executor import Executor
from corral_scheduler.retries import RetryLimits
from services.scheduler.tests import fakes

LIMITS = RetryLimits(max_retries=3, max_retries_limit=5, backoff_s=0.5, backoff_max_s=4.0)


class Harness:
    """An executor, its broker and its settled deliveries, over one backend URL."""

    def __init__(self, executor: Executor, broker: fakes.FakeBroker, waits: list[float]) -> None:
        self.executor = executor
        self.broker = broker
        self.waits = waits
        self.settled: fakes.Settled = asyncio.Queue()

    def push(self, rid: str, content: str = "hello there", **terms: Any) -> None:
        payload = {"model": "llama3.2", "messages": [{"role": "user", "content": content}]}
        delivery = fakes.Delivery(self.settled, rid)
        self.executor.lane.push(
            fakes.entry(
                fakes.job(rid, payload=payload, **terms),
                delivery,
                self.executor.lane.connection_epoch,
            )
        )

    async def settle(self, count: int) -> dict[str, str]:
        return await fakes.settle(self.settled, count)


@asynccontextmanager
async def lane_over(
    url: str, jitter: float = 0.5, limits: RetryLimits = LIMITS
) -> AsyncIterator[Harness]:
    broker = fakes.FakeBroker()
    waits: list[float] = []
    async with aiohttp.ClientSession() as session:
        backend = OllamaBackend(session, url, connect_timeout_s=2.0, read_timeout_s=30.0)
        executor = fakes.make_executor(
            broker, backend, sleep=fakes.recording(waits), retry=limits, jitter=lambda: jitter
        )
        task = asyncio.create_task(executor.run_forever())
        try:
            yield Harness(executor, broker, waits)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emulator:
        yield emulator


def fail(emulator: RunningEmulator, **plan: Any) -> None:
    emulator.state.failures.add(FailurePlan.from_mapping(plan))


def retries(reason: str) -> float:
    return REGISTRY.get_sample_value("corral_backend_retries_total", {"reason": reason}) or 0.0


def outcomes(outcome: str) -> float:
    sample = REGISTRY.get_sample_value("corral_backend_retry_outcomes_total", {"outcome": outcome})
    return sample or 0.0


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        ({"mode": "refuse"}, "reset"),
        ({"mode": "500", "status": 503}, "http_503"),
        ({"mode": "500", "status": 502}, "http_502"),
    ],
)
async def test_a_backend_not_ready_is_retried_with_backoff_until_it_answers(
    emulator: RunningEmulator, plan: dict[str, Any], reason: str
) -> None:
    fail(emulator, **plan, count=2)
    before, recovered = retries(reason), outcomes("recovered")
    async with lane_over(emulator.url) as lane:
        lane.push("patient", "are you there")
        assert await lane.settle(1) == {"patient": "ack"}
    stats = emulator.state.stats()
    # Three attempts reached the backend: two failed, the third generated the answer once.
    assert stats["failures_injected"] == 2
    assert (stats["generations"], stats["completed"], stats["max_active"]) == (1, 1, 1)
    # Two backoff waits, each drawn (jitter 0.5) under its doubling ceiling (0.5 s, 1 s).
    assert lane.waits == [0.25, 0.5]
    assert retries(reason) - before == 2
    assert outcomes("recovered") - recovered == 1
    # The client saw one start and one answer: the retries were only a longer wait.
    kinds = lane.broker.kinds("patient")
    assert kinds.count("started") == 1 and kinds[-1] == "done" and "error" not in kinds
    assert lane.broker.final("patient")["text"] == expected_reply("are you there")


async def test_out_of_retries_the_client_gets_the_backends_failure(
    emulator: RunningEmulator,
) -> None:
    fail(emulator, mode="refuse", count=-1)
    exhausted = outcomes("exhausted")
    async with lane_over(emulator.url) as lane:
        lane.push("unlucky")
        assert await lane.settle(1) == {"unlucky": "ack"}
    # max_retries 3: four attempts, three waits (ceilings 0.5, 1, 2 s), then the 503.
    assert emulator.state.stats()["failures_injected"] == 4
    assert lane.waits == [0.25, 0.5, 1.0]
    assert outcomes("exhausted") - exhausted == 1
    final = lane.broker.final("unlucky")
    assert (final["kind"], final["status"], final["error_type"]) == (
        "error",
        503,
        "ollama_connection_error",
    )
    assert "started" not in lane.broker.kinds("unlucky")


async def test_a_backend_that_is_down_is_retried_then_reported(emulator: RunningEmulator) -> None:
    """Nothing listens (a backend restarting): connection refused, retried, then 503."""
    before = retries("refused")
    async with lane_over(f"http://127.0.0.1:{free_port()}") as lane:
        lane.push("nobody home")
        assert await lane.settle(1) == {"nobody home": "ack"}
    assert retries("refused") - before == 3
    assert lane.broker.final("nobody home")["error_type"] == "ollama_connection_error"


async def test_a_requests_own_terms_decide_its_retries(emulator: RunningEmulator) -> None:
    fail(emulator, mode="refuse", count=-1)
    async with lane_over(emulator.url) as lane:
        lane.push("no retries", max_retries=0)
        lane.push("its own", max_retries=1, retry_backoff_s=2.0)
        lane.push("greedy", max_retries=50)
        await lane.settle(3)
        # 1 attempt + 2 attempts (one wait under 2 s) + 6 attempts (capped at 5 retries).
        assert emulator.state.stats()["failures_injected"] == 1 + 2 + 6
        assert lane.waits == [1.0, 0.25, 0.5, 1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "plan",
    [
        {"mode": "500"},  # the backend failed the request: it may have run
        {"mode": "500", "status": 504},  # a proxy gave up on a backend that may be working
        {"mode": "404"},
        {"mode": "midstream", "after_tokens": 0},  # the response had begun
        {"mode": "midstream", "after_tokens": 2},  # tokens were generated
    ],
)
async def test_what_may_have_started_is_never_retried(
    emulator: RunningEmulator, plan: dict[str, Any]
) -> None:
    fail(emulator, **plan, count=1)
    async with lane_over(emulator.url) as lane:
        lane.push("once only", "one two three four five")
        assert await lane.settle(1) == {"once only": "ack"}
    assert emulator.state.stats()["failures_injected"] == 1
    assert lane.waits == []
    assert lane.broker.final("once only")["kind"] == "error"


async def test_no_retry_is_made_that_could_not_start_before_the_deadline(
    emulator: RunningEmulator,
) -> None:
    fail(emulator, mode="refuse", count=-1)
    deadline = outcomes("deadline")
    # Jitter 1.0: the first wait would be the whole 0.5 s ceiling, past the 0.2 s left.
    async with lane_over(emulator.url, jitter=1.0) as lane:
        lane.push("in a hurry", finish_by=time.time() + 0.2)
        assert await lane.settle(1) == {"in a hurry": "ack"}
    assert emulator.state.stats()["failures_injected"] == 1
    assert lane.waits == []
    assert outcomes("deadline") - deadline == 1
    assert lane.broker.final("in a hurry")["error_type"] == "ollama_connection_error"


async def test_the_deadline_stops_a_generation_and_frees_the_lane(
    emulator: RunningEmulator,
) -> None:
    """A long generation past its request's deadline: cancelled on the backend (the emulator
    sees the disconnect), answered 504 backend_timeout, and the next job runs."""
    emulator.state.config.token_delay_ms = 20
    long_prompt = " ".join(f"word{i}" for i in range(500))  # ten seconds of tokens
    timeouts = (
        REGISTRY.get_sample_value("corral_request_timeouts_total", {"stage": "generating"}) or 0.0
    )
    async with lane_over(emulator.url) as lane:
        lane.push("too long", long_prompt, finish_by=time.time() + 0.3)
        lane.push("next", "short one")
        assert await lane.settle(2) == {"too long": "ack", "next": "ack"}
    final = lane.broker.final("too long")
    assert (final["kind"], final["status"], final["error_type"]) == (
        "error",
        504,
        "backend_timeout",
    )
    assert final["details"]["stage"] == "generating"
    assert "not kept" in final["message"]
    assert "done" not in lane.broker.kinds("too long")
    assert lane.broker.final("next")["text"] == expected_reply("short one")
    state = emulator.state
    await wait_for_state(state, lambda: state.stats()["cancelled"] == 1)
    stats = state.stats()
    assert (stats["cancelled_midstream"], stats["completed"], stats["max_active"]) == (1, 1, 1)
    assert (
        REGISTRY.get_sample_value("corral_request_timeouts_total", {"stage": "generating"}) or 0.0
    ) - timeouts == 1
