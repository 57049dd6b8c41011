"""The unloader's decisions, with a hand-moved clock, a fake memory probe and a fake lane."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import (
    BackendStatus,
    Done,
    Failed,
    Job,
    ModelActivity,
    QueueStatus,
    SchedulerStatus,
    ServerStatus,
)
from corral_common.status_board import StatusBoard
from corral_model_manager.jobs import JobSubmitter
from corral_model_manager.servers import ServerModels
from corral_model_manager.unloader import (
    Unload,
    Unloader,
    UnloadPolicy,
    plan_unloads,
)

MANAGER_ID = "manager1"
STALE_S = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def status(
    at: float,
    *activity: ModelActivity,
    scheduler_id: str = "s1",
    servers: tuple[str, ...] = ("backend",),
) -> SchedulerStatus:
    return SchedulerStatus(
        scheduler_id=scheduler_id,
        sent_at=at,
        backend=BackendStatus(url="http://backend", connected=True),
        servers=[ServerStatus(name=name, url=f"http://{name}", connected=True) for name in servers],
        queue=QueueStatus(waiting=0, running=0, average_wait_ms=0, processing_rate=0.0),
        models=list(activity),
    )


def skipped(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("corral_model_unloads_skipped_total", {"reason": reason}) or 0.0
    )


def unloaded(reason: str) -> float:
    return REGISTRY.get_sample_value("corral_model_unloads_total", {"reason": reason}) or 0.0


class Harness:
    """An unloader over fake backends (`loaded`, or `loaded_on` for a pool of `servers`), fake
    host memory (every server is local) and a fake jobs queue."""

    def __init__(
        self,
        *,
        idle_unload_s: float = 900,
        memory_percent: float = 90,
        servers: tuple[str, ...] = ("backend",),
    ) -> None:
        self.clock = Clock()
        self.servers = servers
        self.loaded_on: dict[str, list[str]] = {name: [] for name in servers}
        self.memory = 50.0
        self.jobs: list[Job] = []
        self.ps_calls = 0
        self.board = StatusBoard(STALE_S, self.clock)

        async def publish(job: Job) -> None:
            self.jobs.append(job)

        async def running_models() -> list[ServerModels]:
            self.ps_calls += 1
            # With one server its unloads are aimed at no server, as the model manager does.
            pooled = len(self.servers) > 1
            return [
                ServerModels(
                    name,
                    target=name if pooled else None,
                    local=True,
                    models=[{"name": model, "model": model} for model in loaded],
                )
                for name, loaded in self.loaded_on.items()
            ]

        self.submitter = JobSubmitter(MANAGER_ID, publish, answer_timeout_s=300, clock=self.clock)
        self.unloader = Unloader(
            policy=UnloadPolicy(
                idle_unload_s=idle_unload_s, memory_pressure_percent=memory_percent
            ),
            board=self.board,
            running_models=running_models,
            submitter=self.submitter,
            interval_s=5,
            memory_probe=lambda: self.memory,
            clock=self.clock,
        )

    @property
    def loaded(self) -> list[str]:
        """What the first (or only) server holds."""
        return self.loaded_on[self.servers[0]]

    @loaded.setter
    def loaded(self, models: list[str]) -> None:
        self.loaded_on[self.servers[0]] = models

    def report(self, *activity: ModelActivity) -> None:
        self.board.update(status(self.clock(), *activity, servers=self.servers))

    async def check(self) -> list[tuple[str, str]]:
        """(model, reason) of the unloads this check submitted."""
        return [(model, reason) for model, reason, _ in await self.check_servers()]

    async def check_servers(self) -> list[tuple[str, str, str | None]]:
        """(model, reason, server) of the unloads this check submitted."""
        before = len(self.jobs)
        await self.unloader.check()
        return [(job.model, self.reason(job), job.server) for job in self.jobs[before:]]

    def reason(self, job: Job) -> str:
        pending = [p for p in self.submitter._pending.values() if p.job == job]
        return pending[0].reason if pending else "?"

    def answer(self, job: Job, event: Done | Failed) -> None:
        pending = self.submitter.answered(event)
        assert pending is not None and pending.job == job
        self.unloader.answered(pending, event)


def done(job: Job) -> Done:
    return Done(
        request_id=job.request_id, token_batches=0, final={}, text="", waited_ms=0, model=job.model
    )


async def test_without_a_fresh_status_nothing_is_unloaded() -> None:
    h = Harness(idle_unload_s=60)
    h.loaded = ["llama3.2:latest"]
    h.memory = 99
    assert await h.unloader.check() is None
    h.clock.advance(3600)
    assert await h.check() == []
    assert h.ps_calls == 0  # activity unknown: not even looked at
    # A status gone stale counts as none.
    h.report()
    h.clock.advance(STALE_S + 1)
    assert await h.check() == []
    assert h.jobs == []


async def test_idle_models_are_unloaded_once_the_threshold_is_reached() -> None:
    h = Harness(idle_unload_s=900)
    h.loaded = ["llama3.2:latest", "tiny:latest"]
    h.report()
    # First seen loaded now: that is its last use as far as anyone knows.
    assert await h.check() == []
    h.clock.advance(600)
    # The scheduler ran tiny 100 s ago: it is idle from then, not from first sight.
    h.report(ModelActivity(model="tiny", last_used_at=h.clock() - 100))
    h.clock.advance(299)
    h.report(ModelActivity(model="tiny", last_used_at=h.clock() - 399))
    assert await h.check() == []
    h.clock.advance(1)
    h.report(ModelActivity(model="tiny", last_used_at=h.clock() - 400))
    assert await h.check() == [("llama3.2:latest", "idle")]
    before = unloaded("idle")
    h.answer(h.jobs[0], done(h.jobs[0]))
    assert unloaded("idle") == before + 1
    h.loaded.remove("llama3.2:latest")
    h.clock.advance(500)
    h.report(ModelActivity(model="tiny", last_used_at=h.clock() - 900))
    assert await h.check() == [("tiny:latest", "idle")]


async def test_the_unload_job_has_the_lanes_shape() -> None:
    h = Harness(idle_unload_s=10)
    h.loaded = ["Llama3.2"]
    h.report()
    await h.check()
    h.clock.advance(10)
    h.report()
    await h.check()
    [job] = h.jobs
    assert job.kind == "unload"
    assert job.model == "Llama3.2"  # as the backend named it
    assert job.payload == {"model": "Llama3.2", "keep_alive": 0}
    assert job.gateway_id == MANAGER_ID
    assert job.queue_progress is False
    assert job.enqueued_at == h.clock()
    assert len(job.request_id) == 32 and "." not in job.request_id


async def test_a_busy_model_is_never_unloaded() -> None:
    h = Harness(idle_unload_s=60, memory_percent=90)
    h.loaded = ["llama3.2:latest"]
    h.report()
    await h.check()
    h.clock.advance(3600)
    h.memory = 99
    busy_before = skipped("busy")
    # Queued work on any scheduler, under any spelling of the name, keeps it loaded.
    h.board.update(status(h.clock(), scheduler_id="s1"))
    h.board.update(status(h.clock(), ModelActivity(model="llama3.2", queued=1), scheduler_id="s2"))
    assert await h.check() == []
    h.report(ModelActivity(model="registry.ollama.ai/library/llama3.2:latest", running=1))
    h.board.update(status(h.clock(), scheduler_id="s2"))
    assert await h.check() == []
    assert skipped("busy") > busy_before
    assert h.jobs == []
    # Once the lane is empty again, its last use counts from then.
    h.memory = 50
    h.report(ModelActivity(model="llama3.2", last_used_at=h.clock()))
    h.board.update(status(h.clock(), scheduler_id="s2"))
    assert await h.check() == []
    h.clock.advance(60)
    h.report(ModelActivity(model="llama3.2", last_used_at=h.clock() - 60))
    h.board.update(status(h.clock(), scheduler_id="s2"))
    assert await h.check() == [("llama3.2:latest", "idle")]


async def test_memory_pressure_unloads_the_least_recently_used_one_per_check() -> None:
    h = Harness(idle_unload_s=0, memory_percent=90)
    h.loaded = ["a:latest", "b:latest", "c:latest"]
    h.report()
    assert await h.check() == []  # first seen loaded now
    now = h.clock()
    activity = [
        ModelActivity(model="a", last_used_at=now + 30),
        ModelActivity(model="b", last_used_at=now + 10),
        ModelActivity(model="c", last_used_at=now + 20),
    ]
    h.clock.advance(40)
    h.report(*activity)
    h.memory = 89.9
    assert await h.check() == []
    h.memory = 90
    assert await h.check() == [("b:latest", "memory")]
    # While that unload is on its way, memory cannot show the relief yet: no second one.
    assert await h.check() == []
    before = unloaded("memory")
    h.answer(h.jobs[0], done(h.jobs[0]))
    assert unloaded("memory") == before + 1
    h.loaded.remove("b:latest")
    assert await h.check() == [("c:latest", "memory")]


async def test_memory_pressure_spares_busy_models_and_respects_off() -> None:
    h = Harness(idle_unload_s=0, memory_percent=90)
    h.loaded = ["a:latest", "b:latest"]
    h.memory = 95
    h.report(ModelActivity(model="a", queued=2), ModelActivity(model="b", last_used_at=0))
    assert await h.check() == [("b:latest", "memory")]

    off = Harness(idle_unload_s=0, memory_percent=0)
    off.loaded = ["a:latest"]
    off.memory = 100
    off.report()
    off.clock.advance(10**6)
    off.report()
    assert await off.check() == []


async def test_one_pending_unload_per_model_until_answered() -> None:
    h = Harness(idle_unload_s=10)
    h.loaded = ["tiny:latest"]
    h.report()
    await h.check()
    h.clock.advance(10)
    h.report()
    assert await h.check() == [("tiny:latest", "idle")]
    assert await h.check() == []
    # The lane refused (work arrived for it meanwhile): the next check may try again.
    refused_before = skipped("model_busy")
    job = h.jobs[0]
    h.answer(
        job,
        Failed(
            request_id=job.request_id,
            status=409,
            error_type=str(ErrorType.MODEL_BUSY),
            message="model has queued work",
        ),
    )
    assert skipped("model_busy") == refused_before + 1
    assert await h.check() == [("tiny:latest", "idle")]
    # An answer that never comes stops blocking after the timeout.
    assert await h.check() == []
    h.clock.advance(301)
    h.report()
    assert await h.check() == [("tiny:latest", "idle")]


async def test_an_unreachable_backend_decides_nothing() -> None:
    h = Harness(idle_unload_s=1)
    h.report()

    async def down() -> Any:
        raise CorralError(ErrorType.OLLAMA_CONNECTION_ERROR, "down")

    h.unloader._running_models = down
    assert await h.unloader.check() is None
    assert h.jobs == []


@pytest.mark.parametrize(
    ("memory", "expected"),
    [(None, []), (80.0, []), (95.0, [Unload("old:latest", "memory")])],
)
def test_plan_is_pure(memory: float | None, expected: list[Unload]) -> None:
    plan = plan_unloads(
        ["old:latest", "new:latest"],
        [status(100.0)],
        {"old:latest": 10.0, "new:latest": 50.0},
        server="backend",
        now=100.0,
        memory_percent=memory,
        policy=UnloadPolicy(idle_unload_s=0, memory_pressure_percent=90),
        pending=set(),
    )
    assert plan.unloads == expected


# A pool: each server's use of a model is its own.

POOL = ("gpu1", "gpu2")


def pool_harness(*, idle_unload_s: float, holding: tuple[str, ...]) -> Harness:
    """Both servers of a pool holding the same models, first seen loaded now."""
    h = Harness(idle_unload_s=idle_unload_s, servers=POOL)
    for server in POOL:
        h.loaded_on[server] = list(holding)
    return h


async def test_a_model_used_on_one_server_only_is_idle_unloaded_on_the_other() -> None:
    h = pool_harness(idle_unload_s=900, holding=("tiny:latest",))
    h.report()
    assert await h.check_servers() == []  # first seen on both now
    h.clock.advance(900)
    # gpu1 ran it 10 s ago; gpu2 has not since the scheduler started: idle there since it
    # was first seen, whatever gpu1 does.
    used = h.clock() - 10
    h.report(ModelActivity(model="tiny", last_used_at=used, last_used_on={"gpu1": used}))
    assert await h.check_servers() == [("tiny:latest", "idle", "gpu2")]


async def test_a_servers_own_last_use_decides_its_idle_time() -> None:
    h = pool_harness(idle_unload_s=900, holding=("tiny:latest",))
    h.report()
    await h.check()
    h.clock.advance(2000)
    now = h.clock()
    on = {"gpu1": now - 10, "gpu2": now - 899}
    h.report(ModelActivity(model="tiny", last_used_at=now - 10, last_used_on=on))
    assert await h.check_servers() == []
    h.clock.advance(1)
    h.report(ModelActivity(model="tiny", last_used_at=now - 10, last_used_on=on))
    assert await h.check_servers() == [("tiny:latest", "idle", "gpu2")]


async def test_a_running_job_keeps_its_model_where_it_runs_queued_work_everywhere() -> None:
    h = pool_harness(idle_unload_s=60, holding=("tiny:latest",))
    h.report()
    await h.check()
    h.clock.advance(60)
    # Queued work may go to either server: kept on both.
    h.report(ModelActivity(model="tiny", queued=1, running=1, running_on=["gpu1"]))
    assert await h.check_servers() == []
    busy_before = skipped("busy")
    h.report(ModelActivity(model="tiny", running=1, running_on=["gpu1"]))
    assert await h.check_servers() == [("tiny:latest", "idle", "gpu2")]
    assert skipped("busy") == busy_before + 1  # gpu1's


async def test_memory_pressure_picks_each_servers_own_least_recently_used() -> None:
    h = pool_harness(idle_unload_s=0, holding=("a:latest", "b:latest"))
    h.report()
    assert await h.check_servers() == []  # first seen loaded now
    now = h.clock()
    h.clock.advance(40)
    # Model-wide b is the least recently used; on gpu2 it is a.
    h.report(
        ModelActivity(
            model="a", last_used_at=now + 30, last_used_on={"gpu1": now + 30, "gpu2": now + 5}
        ),
        ModelActivity(
            model="b", last_used_at=now + 20, last_used_on={"gpu1": now + 10, "gpu2": now + 20}
        ),
    )
    h.memory = 95  # the host's, which both servers are on
    assert await h.check_servers() == [
        ("b:latest", "memory", "gpu1"),
        ("a:latest", "memory", "gpu2"),
    ]


async def test_a_status_that_cannot_tell_the_servers_apart_counts_on_every_server() -> None:
    h = pool_harness(idle_unload_s=60, holding=("tiny:latest",))
    h.report()
    await h.check()
    h.clock.advance(60)
    used = h.clock() - 10
    # An older scheduler: activity per model only. Used, or running, anywhere counts as
    # used, or running, on both.
    h.report(ModelActivity(model="tiny", last_used_at=used))
    assert await h.check_servers() == []
    h.report(ModelActivity(model="tiny", running=1))
    assert await h.check_servers() == []
    # A scheduler whose pool has no gpu2 (a config mismatch): its model-wide use counts there.
    per_server = ModelActivity(
        model="tiny", last_used_at=used, last_used_on={"gpu1": used}, running_on=[]
    )
    h.board.update(status(h.clock(), per_server, servers=("gpu1",)))
    assert await h.check_servers() == []
    running = ModelActivity(model="tiny", running=1, running_on=["gpu1"])
    h.board.update(status(h.clock(), running, servers=("gpu1",)))
    assert await h.check_servers() == []
    # Several schedulers: each one's word counts, the one that knows gpu2 not alone.
    h.board.update(status(h.clock(), per_server, servers=POOL))
    h.board.update(
        status(h.clock(), ModelActivity(model="tiny", last_used_at=used), scheduler_id="old")
    )
    assert await h.check_servers() == []
    h.board.update(status(h.clock(), scheduler_id="old", servers=POOL))
    assert await h.check_servers() == [("tiny:latest", "idle", "gpu2")]
