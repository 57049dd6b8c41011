"""A model's use as the scheduler reports it to the model manager, per pool server: the
executor tells the lane which server ran each job, and an unload on one server forgets the
model's use there and nowhere else (fake backends, fake broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import ModelActivity
from corral_scheduler.events import EventSink
from corral_scheduler.executor import Executor
from corral_scheduler.lane import Lane
from services.scheduler.tests import fakes


class FakeBackend:
    """The part of `backends.base.Backend` the executor calls for these jobs."""

    kind = "ollama"
    base_url = "http://backend"
    # Set: the server refuses to unload (as Ollama does a model it is still running).
    refuse_unload = False

    async def embed(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"embeddings": [[0.0]]}

    async def unload(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.refuse_unload:
            raise CorralError(ErrorType.BACKEND_ERROR, "model is busy", status=500)
        return {"done": True}


@asynccontextmanager
async def pool_of(*names: str) -> AsyncIterator[Executor]:
    backends = {name: FakeBackend() for name in names}
    executor = Executor(
        Lane(servers=names),
        backends,  # type: ignore[arg-type]
        EventSink(fakes.FakeBroker()),  # type: ignore[arg-type]
        fakes.speed_book(),
        sleep=fakes.recording([]),
    )
    async with fakes.running(executor):
        yield executor


async def run_on(executor: Executor, server: str, rid: str, kind: str, model: str) -> None:
    """One job aimed at `server`, run to its end (its delivery settled)."""
    settled: fakes.Settled = asyncio.Queue()
    job = fakes.job(rid, kind=kind, model=model, server=server, payload={"model": model})
    lane = executor.lane
    lane.push(fakes.entry(job, fakes.Delivery(settled, rid), lane.connection_epoch))
    assert await fakes.settle(settled, 1) == {rid: "ack"}


def activity(executor: Executor) -> dict[str, ModelActivity]:
    return {one.model: one for one in executor.lane.model_activity()}


async def test_each_server_reports_its_own_use_and_an_unload_forgets_only_its_own() -> None:
    async with pool_of("gpu1", "gpu2") as executor:
        await run_on(executor, "gpu1", "a", "embed", "all-minilm")
        await run_on(executor, "gpu2", "b", "embed", "all-minilm")
        used = activity(executor)["all-minilm:latest"]
        assert set(used.last_used_on) == {"gpu1", "gpu2"}
        assert used.last_used_on["gpu1"] <= used.last_used_on["gpu2"]
        assert used.last_used_at == used.last_used_on["gpu2"]
        await run_on(executor, "gpu2", "u", "unload", "all-minilm")
        left = activity(executor)["all-minilm:latest"]
        assert left.last_used_on == {"gpu1": used.last_used_on["gpu1"]}
        assert left.last_used_at == used.last_used_on["gpu1"]
        assert (left.queued, left.running, left.running_on) == (0, 0, [])


async def test_an_unload_that_did_not_happen_keeps_the_models_use_there() -> None:
    async with pool_of("gpu1", "gpu2") as executor:
        await run_on(executor, "gpu1", "a", "embed", "all-minilm")
        used = activity(executor)["all-minilm:latest"].last_used_on
        executor.backends["gpu1"].refuse_unload = True  # type: ignore[attr-defined]
        await run_on(executor, "gpu1", "u", "unload", "all-minilm")
        assert activity(executor)["all-minilm:latest"].last_used_on == used
