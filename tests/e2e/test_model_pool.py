"""The model manager in front of a pool of two emulators (`CORRAL_BACKENDS`), through the whole
cluster: `/api/tags` is the union, `/api/ps` names each model's server, a pull and a delete
reach every server, and memory pressure on one server (its loaded models' size against its
budget) unloads a model there and nowhere else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory, Emulator, start_emulator
from tests.polling import eventually
from tests.service_metrics import metric_value, metrics_url

pytestmark = pytest.mark.e2e

# gpu2's models take 397.8 MB (qwen2.5:0.5b) and 16.8 MB (tiny): both loaded, 98.5 % of this.
GPU2_BUDGET = 420_000_000
GPU2_MODELS = ("tiny", "qwen2.5:0.5b")


@pytest.fixture(scope="module")
def second_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    emulator = start_emulator(tmp_path_factory.mktemp("gpu2"), "emulator-gpu2")
    yield emulator.url
    emulator.process.stop()


@pytest.fixture(scope="module")
def pool_cluster(
    new_cluster: ClusterFactory, emulator: Emulator, second_emulator: str
) -> Iterator[Cluster]:
    with new_cluster(
        "model-pool",
        whole=True,
        CORRAL_BACKENDS=f"gpu1={emulator.url},gpu2={second_emulator}",
        # gpu1 is never full; gpu2 is once both its models are loaded.
        CORRAL_MODEL_MEMORY_BUDGET_BYTES=f"gpu1=1TB,gpu2={GPU2_BUDGET}",
        CORRAL_MEMORY_PRESSURE_PERCENT="90",
        CORRAL_IDLE_UNLOAD_S="0",
        CORRAL_UNLOAD_CHECK_INTERVAL_S="0.1",
        CORRAL_STATUS_INTERVAL_S="0.2",
    ) as cluster:
        yield cluster


@pytest.fixture
async def gpu2(second_emulator: str) -> AsyncIterator[EmulatorControl]:
    """The second emulator, holding only tiny and qwen2.5:0.5b."""
    async with EmulatorControl(second_emulator) as control:
        await control.reset()
        specs = (await control.config())["models"]
        await control.configure(models=[s for s in specs if s["name"] in GPU2_MODELS])
        yield control
        await control.release()


@pytest.fixture(autouse=True)
async def serial_servers(emu: EmulatorControl, gpu2: EmulatorControl) -> AsyncIterator[None]:
    """Both servers reset for each test, and neither ever ran two things at once."""
    yield
    for control in (emu, gpu2):
        assert (await control.stats())["max_active"] <= 1


async def get(cluster: Cluster, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cluster.gateway_url}{path}") as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def load(server: str, model: str) -> None:
    """Loaded on that server directly, as if the lane had run it there."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server}/api/generate", json={"model": model}) as response,
    ):
        assert response.status == 200


async def seen_loaded(cluster: Cluster, server: str, size: int) -> None:
    """Until the model manager has measured `size` bytes of models loaded on `server`."""
    sample = f'corral_backend_loaded_bytes{{server="{server}"}}'

    async def measured() -> bool:
        return await metric_value(cluster, sample, "model-manager") == size

    await eventually(measured, what=f"{server}'s loaded models measured")


async def names_at(server: str, path: str) -> set[str]:
    """The model names of a server's own `/api/tags` or `/api/ps`."""
    async with aiohttp.ClientSession() as session, session.get(f"{server}{path}") as response:
        return {entry["name"] for entry in (await response.json())["models"]}


async def test_tags_are_the_pools_union(pool_cluster: Cluster) -> None:
    tags = (await get(pool_cluster, "/api/tags"))["models"]
    where = {entry["name"]: entry["servers"] for entry in tags}
    assert where["tiny:latest"] == ["gpu1", "gpu2"]
    assert where["llama3.2:latest"] == ["gpu1"]
    assert len(tags) == len(where)  # each model once
    client = ollama.AsyncClient(host=pool_cluster.gateway_url)
    assert "qwen2.5:0.5b" in {m.model for m in (await client.list()).models}


async def test_ps_names_each_models_server(
    pool_cluster: Cluster,
    emulator: Emulator,
    second_emulator: str,
) -> None:
    await load(emulator.url, "llama3.2")
    await load(second_emulator, "tiny")
    running = (await get(pool_cluster, "/api/ps"))["models"]
    assert sorted((entry["server"], entry["name"]) for entry in running) == [
        ("gpu1", "llama3.2:latest"),
        ("gpu2", "tiny:latest"),
    ]
    tiny = next(entry for entry in running if entry["server"] == "gpu2")
    assert tiny["size"] == 16_777_216 and tiny["details"]["parameter_size"] == "15M"


async def test_a_pull_reaches_every_server_then_succeeds_once(
    pool_cluster: Cluster,
    emulator: Emulator,
    second_emulator: str,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{pool_cluster.gateway_url}/api/pull", json={"model": "all-minilm"}) as r,
    ):
        assert r.status == 200
        lines = [orjson.loads(line) for line in (await r.read()).splitlines() if line.strip()]
    assert lines[-1] == {"status": "success"}
    assert [line for line in lines if line["status"] == "success"] == [lines[-1]]
    servers = [line["server"] for line in lines[:-1]]
    assert servers == sorted(servers) and set(servers) == {"gpu1", "gpu2"}
    assert {"status": "finished on gpu2", "server": "gpu2"} in lines
    for server in (emulator.url, second_emulator):
        assert "all-minilm:latest" in await names_at(server, "/api/tags")
    # The official client reads it as Ollama's pull.
    client = ollama.AsyncClient(host=pool_cluster.gateway_url)
    assert (await client.pull("all-minilm")).status == "success"
    # And a delete goes wherever the model is.
    await client.delete("all-minilm")
    for server in (emulator.url, second_emulator):
        assert "all-minilm:latest" not in await names_at(server, "/api/tags")


async def test_memory_is_measured_on_each_server_against_its_budget(
    pool_cluster: Cluster,
    emulator: Emulator,
    second_emulator: str,
) -> None:
    await load(emulator.url, "llama3.2")  # 2 GB on gpu1: nothing against its budget
    await load(second_emulator, "tiny")
    await seen_loaded(pool_cluster, "gpu2", 16_777_216)
    gpu1 = 'corral_backend_memory_percent{server="gpu1"}'
    gpu2_percent = 'corral_backend_memory_percent{server="gpu2"}'
    assert await metric_value(pool_cluster, gpu2_percent, "model-manager") == pytest.approx(
        100 * 16_777_216 / GPU2_BUDGET
    )
    assert await metric_value(pool_cluster, gpu1, "model-manager") == pytest.approx(
        100 * 2_019_393_189 / 10**12, rel=1e-3
    )
    # The model manager's /health shows each server as the last check found it.
    health_url = metrics_url(pool_cluster, "model-manager").removesuffix("/metrics") + "/health"
    async with aiohttp.ClientSession() as session, session.get(health_url) as response:
        servers = {server["name"]: server for server in (await response.json())["servers"]}
    assert servers["gpu2"]["loaded"] == ["tiny:latest"]
    assert servers["gpu2"]["budget_bytes"] == GPU2_BUDGET
    assert servers["gpu2"]["memory_percent"] == round(100 * 16_777_216 / GPU2_BUDGET, 1)
    assert servers["gpu1"]["loaded"] == ["llama3.2:latest"]


async def test_pressure_on_one_server_unloads_there_and_nowhere_else(
    pool_cluster: Cluster, emulator: Emulator, second_emulator: str, gpu2: EmulatorControl
) -> None:
    await load(emulator.url, "llama3.2")
    await load(second_emulator, "tiny")
    # Seen loaded first, so the least recently used when qwen takes gpu2 to 98.5 %.
    await seen_loaded(pool_cluster, "gpu2", 16_777_216)
    await load(second_emulator, "qwen2.5:0.5b")

    async def relieved() -> bool:
        # One unload per check until below 90 %: tiny first, then qwen (94.7 % alone).
        return not await names_at(second_emulator, "/api/ps")

    await eventually(relieved, what="gpu2 relieved of its models")
    unloads = [
        body["model"] for body in await gpu2.requests("generate") if body.get("keep_alive") == 0
    ]
    assert unloads == ["tiny:latest", "qwen2.5:0.5b"]
    assert await names_at(emulator.url, "/api/ps") == {"llama3.2:latest"}
