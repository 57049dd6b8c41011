"""The model manager in front of a pool (`CORRAL_BACKENDS`): `ModelServers` over two in-process
emulators (and an OpenAI-only one for a mixed pool), and the unloader judging each server's
memory by its own `/api/ps` against its budget."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from corral_common.backend_servers import BackendServer
from corral_common.errors import CorralError
from corral_common.messages import (
    EVENT_ADAPTER,
    BackendStatus,
    Event,
    Failed,
    Job,
    ModelActivity,
    Progress,
    QueueStatus,
    SchedulerStatus,
    ServerStatus,
)
from corral_common.status_board import StatusBoard
from corral_devstack.ports import free_port
from corral_emulator import DEFAULT_MODELS, EmulatorConfig, RunningEmulator, running_emulator
from corral_emulator.registry import MANIFEST_NOT_FOUND
from corral_model_manager.blob_uploads import BlobUploads
from corral_model_manager.jobs import JobSubmitter
from corral_model_manager.operations import ModelOperation, ModelOperations, Watcher
from corral_model_manager.servers import (
    FINISHED_ON,
    ModelServers,
    ServerModels,
    is_loopback,
    open_servers,
)
from corral_model_manager.settings import ModelManagerSettings, parse_budgets, parse_bytes
from corral_model_manager.throttle import ProgressThrottle, Step
from corral_model_manager.unloader import (
    Unloader,
    UnloadPolicy,
    loaded_bytes,
    loaded_names,
    server_memory_percent,
)

WAIT_S = 10.0


def models(*names: str) -> EmulatorConfig:
    return EmulatorConfig(models=tuple(spec for spec in DEFAULT_MODELS if spec.name in names))


@pytest.fixture
async def gpu1() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(models("tiny", "llama3.2")) as emulator:
        yield emulator


@pytest.fixture
async def gpu2() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(models("tiny", "qwen2.5:0.5b")) as emulator:
        yield emulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


OpenPool = Callable[..., ModelServers]


@pytest.fixture
def open_pool(session: aiohttp.ClientSession) -> OpenPool:
    def open_(**urls: str) -> ModelServers:
        servers = [
            BackendServer(name=name, url=url.removeprefix("openai+"), kind="openai")
            if url.startswith("openai+")
            else BackendServer(name=name, url=url)
            for name, url in urls.items()
        ]
        return open_servers(session, servers, ttl_s=60, timeout_s=WAIT_S, stall_timeout_s=WAIT_S)

    return open_


@pytest.fixture
def pool(open_pool: OpenPool, gpu1: RunningEmulator, gpu2: RunningEmulator) -> ModelServers:
    return open_pool(gpu1=gpu1.url, gpu2=gpu2.url)


async def load(emulator: RunningEmulator, model: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/api/generate", json={"model": model}) as response,
    ):
        assert response.status == 200


async def lines_of(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line async for line in stream]


def names(listing: Any) -> list[str]:
    return [entry["name"] for entry in listing["models"]]


# -- read-only ---------------------------------------------------------------------------------


async def test_tags_are_the_union_each_model_once(pool: ModelServers) -> None:
    tags = await pool.tags()
    assert sorted(names(tags)) == ["llama3.2:latest", "qwen2.5:0.5b", "tiny:latest"]
    where = {entry["name"]: entry["servers"] for entry in tags["models"]}
    assert where == {
        "tiny:latest": ["gpu1", "gpu2"],
        "llama3.2:latest": ["gpu1"],
        "qwen2.5:0.5b": ["gpu2"],
    }


async def test_ps_lists_every_servers_models_with_its_name(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator, session: Any
) -> None:
    assert await pool.running() == {"models": []}
    await load(gpu1, "tiny")
    await load(gpu2, "tiny")
    await load(gpu2, "qwen2.5:0.5b")
    running = (await pool.running())["models"]
    assert sorted((entry["server"], entry["name"]) for entry in running) == [
        ("gpu1", "tiny:latest"),
        ("gpu2", "qwen2.5:0.5b"),
        ("gpu2", "tiny:latest"),
    ]
    # Ollama's fields as the server wrote them, `server` added.
    async with session.get(f"{gpu2.url}/api/ps") as response:
        own = (await response.json())["models"]
    theirs = [e for e in running if e.pop("server") == "gpu2"]
    assert sorted(theirs, key=lambda e: e["name"]) == sorted(own, key=lambda e: e["name"])


async def test_a_server_that_does_not_answer_is_left_out_until_none_does(
    open_pool: OpenPool, gpu1: RunningEmulator
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    pool = open_pool(gpu1=gpu1.url, gone=dead)
    assert sorted(names(await pool.tags())) == ["llama3.2:latest", "tiny:latest"]
    assert (await pool.running())["models"] == []
    # A server that answered once and then went away keeps its models in the list.
    async with running_emulator(models("qwen2.5:0.5b")) as briefly:
        away = open_pool(gpu1=gpu1.url, away=briefly.url)
        assert "qwen2.5:0.5b" in names(await away.tags())
    assert "qwen2.5:0.5b" in names(await away.tags())
    nobody = open_pool(gone=dead, also=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CorralError) as info:
        await nobody.tags()
    assert info.value.status == 503
    assert info.value.message.startswith("gone: Cannot connect")
    assert info.value.details["server"] == "gone"


async def test_show_and_model_info_come_from_a_server_that_has_the_model(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    await pool.tags()
    shown = await pool.show({"model": "qwen2.5:0.5b"})
    assert shown["details"]["family"] == "qwen2"
    # The list placed it on gpu2: gpu1 was not asked.
    assert gpu1.state.requests.bodies("show") == []
    info = await pool.model_info("qwen2.5:0.5b")
    assert info["context_length"] == 32768
    with pytest.raises(CorralError) as missing:
        await pool.show({"model": "nowhere"})
    assert (missing.value.status, missing.value.message) == (404, "model 'nowhere' not found")


# -- pulls, deletes, copies and blobs ------------------------------------------------------------


async def test_a_pull_runs_on_each_server_in_turn_and_succeeds_once(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    lines = await lines_of(pool.stream("/api/pull", {"model": "all-minilm"}))
    assert lines[-1] == {"status": "success"}
    assert [line for line in lines if line["status"] == "success"] == [lines[-1]]
    servers = [line["server"] for line in lines[:-1]]
    # All of gpu1's lines, then all of gpu2's, each ending with its own end.
    assert servers == sorted(servers)
    assert set(servers) == {"gpu1", "gpu2"}
    ends = [line for line in lines if line["status"].startswith("finished on")]
    assert ends == [
        {"status": FINISHED_ON.format(server="gpu1"), "server": "gpu1"},
        {"status": FINISHED_ON.format(server="gpu2"), "server": "gpu2"},
    ]
    first = [line for line in lines if line.get("server") == "gpu1"]
    assert first[0] == {"status": "pulling manifest", "server": "gpu1"}
    for emulator in (gpu1, gpu2):
        assert emulator.state.catalogue.find("all-minilm") is not None


async def test_a_pull_that_fails_on_one_server_goes_on_and_then_fails_naming_it(
    open_pool: OpenPool, gpu1: RunningEmulator
) -> None:
    empty_registry = EmulatorConfig(models=(), registry=())
    async with running_emulator(empty_registry) as bare:
        pool = open_pool(gpu1=gpu1.url, bare=bare.url)
        seen: list[dict[str, Any]] = []

        async def pull() -> None:
            async for line in pool.stream("/api/pull", {"model": "all-minilm"}):
                seen.append(line)

        with pytest.raises(CorralError) as info:
            await pull()
    assert (info.value.status, info.value.message) == (500, f"bare: {MANIFEST_NOT_FOUND}")
    assert info.value.details["server"] == "bare"
    assert seen[-1] == {"status": f"failed on bare: {MANIFEST_NOT_FOUND}", "server": "bare"}
    assert {"status": "success"} not in seen
    assert gpu1.state.catalogue.find("all-minilm") is not None


async def test_a_pool_pull_as_an_operation_tells_watchers_and_refreshes_after_a_failure(
    open_pool: OpenPool, gpu1: RunningEmulator
) -> None:
    async with running_emulator(EmulatorConfig(models=(), registry=())) as bare:
        pool = open_pool(gpu1=gpu1.url, bare=bare.url)
        events: list[Event] = []
        changed: list[tuple[str, str]] = []

        async def publish(_: str, body: bytes) -> None:
            events.append(EVENT_ADAPTER.validate_json(body))

        async def after(operation: ModelOperation) -> None:
            changed.append((operation.model, operation.state))

        operations = ModelOperations(
            pool, publish, interval_s=0.0, on_success=after, on_failure=after
        )
        operations.pull("all-minilm", Watcher(gateway_id="gw", request_id="r1"))
        await operations.settled()
    *progress, failed = events
    assert isinstance(failed, Failed)
    assert (failed.status, failed.message) == (500, f"bare: {MANIFEST_NOT_FOUND}")
    assert all(isinstance(e, Progress) and not e.final for e in progress)
    lines = [e.line for e in progress if isinstance(e, Progress)]
    assert {"status": FINISHED_ON.format(server="gpu1"), "server": "gpu1"} in lines
    # Every gpu1 layer was seen complete before bare's part began.
    gpu1_layers = {line["digest"]: line for line in lines if "digest" in line}
    assert gpu1_layers and all(line["completed"] == line["total"] for line in gpu1_layers.values())
    # The list is fetched again: all-minilm is on gpu1 now.
    assert changed == [("all-minilm", "error")]
    [pull] = operations.pulls()
    assert (pull["state"], pull["server"]) == ("error", "bare")


async def test_deletes_and_copies_go_where_the_model_is(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    copy = {"source": "tiny", "destination": "t2"}
    assert await pool.call("copy", "POST", "/api/copy", copy) == {}
    assert all(emulator.state.catalogue.find("t2") for emulator in (gpu1, gpu2))
    # Only gpu2 has qwen: deleted there, gpu1's 404 is no failure.
    assert await pool.call("delete", "DELETE", "/api/delete", {"model": "qwen2.5:0.5b"}) == {}
    assert gpu2.state.catalogue.find("qwen2.5:0.5b") is None
    with pytest.raises(CorralError) as nowhere:
        await pool.call("delete", "DELETE", "/api/delete", {"model": "qwen2.5:0.5b"})
    assert (nowhere.value.status, nowhere.value.message) == (404, "model 'qwen2.5:0.5b' not found")


async def test_a_server_that_cannot_be_reached_is_named(
    open_pool: OpenPool, gpu1: RunningEmulator
) -> None:
    pool = open_pool(gpu1=gpu1.url, gone=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CorralError) as deleting:
        await pool.call("delete", "DELETE", "/api/delete", {"model": "tiny"})
    with pytest.raises(CorralError) as checking:
        await pool.head("/api/blobs/sha256:" + "0" * 64)
    for info in (deleting, checking):
        assert info.value.status == 503
        assert info.value.message.startswith("gone: Cannot connect to Ollama server")
        assert info.value.details["server"] == "gone"
    # The server that answered did its part.
    assert gpu1.state.catalogue.find("tiny") is None


async def test_a_blob_is_uploaded_to_every_server_that_lacks_it(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    data = b"GGUF" + bytes(range(256)) * 3000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    uploads = BlobUploads(pool.head, pool.upload, idle_s=WAIT_S, max_uploads=2)

    async def send() -> int:
        upload_id, status = await uploads.begin(digest)
        if upload_id is None:
            assert status is not None
            return status
        offset = 0
        for start in range(0, len(data), 64 * 1024):
            offset = await uploads.chunk(upload_id, offset, data[start : start + 64 * 1024])
        return await uploads.finish(upload_id)

    assert await send() == 201
    for emulator in (gpu1, gpu2):
        blob = emulator.state.blobs.get(digest)
        assert blob is not None and blob.size == len(data)
    assert await send() == 200  # every server has it: nothing sent
    assert await uploads.exists(digest)
    await uploads.close()


async def test_a_mixed_pool_manages_models_on_its_ollama_servers_only(
    open_pool: OpenPool, gpu1: RunningEmulator
) -> None:
    async with running_emulator(EmulatorConfig(openai_only=True)) as openai:
        pool = open_pool(gpu1=gpu1.url, llamacpp=f"openai+{openai.url}")
        assert [server.name for server in pool.managed("pull")] == ["gpu1"]
        lines = await lines_of(pool.stream("/api/pull", {"model": "all-minilm"}))
        assert {line.get("server") for line in lines[:-1]} == {"gpu1"}
        assert lines[-1] == {"status": "success"}
        tags = await pool.tags()
        assert "qwen2.5:0.5b" in names(tags)  # listed by the OpenAI-compatible server
        only_openai = open_pool(a=f"openai+{openai.url}", b=f"openai+{openai.url}")
        with pytest.raises(CorralError) as refused:
            only_openai.managed("pull")
    assert refused.value.status == 501
    assert refused.value.message.startswith("pull is not supported by the openai backend")


def test_the_throttle_keeps_each_servers_layer_ends() -> None:
    clock = [0.0]
    throttle = ProgressThrottle(10.0, lambda: clock[0])
    line = {"status": "pulling sha256:aa", "digest": "sha256:aa", "total": 10}
    sent = []
    for index, (server, done) in enumerate([("a", 0), ("a", 10), ("b", 0), ("b", 10)]):
        sent += throttle.offer(Step(index, {**line, "completed": done, "server": server}))
    sent += throttle.flush()
    assert [(s.line["server"], s.line["completed"]) for s in sent] == [
        ("a", 0),
        ("a", 10),
        ("b", 0),
        ("b", 10),
    ]


# -- memory measured where the models live ------------------------------------------------------


def test_budgets_and_locality() -> None:
    assert parse_bytes("17179869184") == 17179869184
    assert parse_bytes("16GiB") == 16 * 2**30
    assert parse_bytes("20GB") == parse_bytes("20g") == 20 * 10**9
    assert parse_budgets("0") == ({}, 0)
    assert parse_budgets("8GB, gpu1=24GiB") == ({"gpu1": 24 * 2**30}, 8 * 10**9)
    with pytest.raises(ValueError, match="not a byte count"):
        ModelManagerSettings(model_memory_budget_bytes="lots")
    assert ModelManagerSettings(model_memory_budget_bytes="gpu2=1000").memory_budgets() == (
        {"gpu2": 1000},
        0,
    )
    assert is_loopback("http://127.0.0.1:11434") and is_loopback("http://localhost:1")
    assert is_loopback("http://[::1]:11434")
    assert not is_loopback("http://10.0.0.5:11434") and not is_loopback("http://gpu1:11434")


def test_a_servers_memory_is_its_models_of_its_budget_else_the_hosts_if_local() -> None:
    entries: list[dict[str, Any]] = [{"size": 600}, {"size_vram": 200}, {"size": True}]
    assert loaded_bytes(entries) == 800
    remote = ServerModels("gpu1", "gpu1", local=False, models=entries)
    local = ServerModels("here", "here", local=True, models=entries)
    assert server_memory_percent(remote, 1000, host_percent=12.0) == 80.0
    assert server_memory_percent(local, 1000, host_percent=12.0) == 80.0
    assert server_memory_percent(local, 0, host_percent=12.0) == 12.0
    assert server_memory_percent(remote, 0, host_percent=12.0) is None


class Lane:
    """The scheduler's side for the unloader: fresh statuses and the jobs it is sent."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.board = StatusBoard(60)

    async def publish(self, job: Job) -> None:
        self.jobs.append(job)

    def report(self, *activity: ModelActivity) -> None:
        """A status from a scheduler driving the same pool (gpu1, gpu2) as the model manager."""
        self.board.update(
            SchedulerStatus(
                scheduler_id="s1",
                sent_at=time.time(),
                backend=BackendStatus(url="http://pool", connected=True),
                servers=[
                    ServerStatus(name=name, url=f"http://{name}", connected=True)
                    for name in ("gpu1", "gpu2")
                ],
                queue=QueueStatus(waiting=0, running=0, average_wait_ms=0, processing_rate=0),
                models=list(activity),
            )
        )


def unloader_for(
    pool: ModelServers,
    lane: Lane,
    *,
    idle_unload_s: float = 0,
    clock: Callable[[], float] = time.time,
    **budgets: int,
) -> Unloader:
    return Unloader(
        policy=UnloadPolicy(
            idle_unload_s=idle_unload_s, memory_pressure_percent=90, budgets=budgets
        ),
        board=lane.board,
        running_models=pool.loaded,
        submitter=JobSubmitter("manager", lane.publish, answer_timeout_s=60),
        interval_s=60,
        # The host is nearly full, but both servers have budgets: it does not count.
        memory_probe=lambda: 99.0,
        clock=clock,
    )


async def test_pressure_on_one_server_unloads_its_least_recently_used_model_there(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    for model in ("tiny", "llama3.2"):
        await load(gpu1, model)
    for model in ("tiny", "qwen2.5:0.5b"):
        await load(gpu2, model)
    lane = Lane()
    # gpu1 holds 2.04 GB of a 2.1 GB budget (97%); gpu2 0.41 GB of 1 GB.
    unloader = unloader_for(pool, lane, gpu1=2_100_000_000, gpu2=1_000_000_000)
    # Used after they were first seen loaded (now): the last uses tell them apart.
    now = time.time()
    lane.report(
        ModelActivity(model="tiny", last_used_at=now + 10),
        ModelActivity(model="llama3.2", last_used_at=now + 20),
        ModelActivity(model="qwen2.5:0.5b", last_used_at=now + 5),
    )
    plan = await unloader.check()
    assert plan is not None
    [job] = lane.jobs
    assert (job.kind, job.model, job.server) == ("unload", "tiny:latest", "gpu1")
    assert job.payload == {"model": "tiny:latest", "keep_alive": 0}
    # Its answer has not come: no second unload on gpu1, and gpu2 is not under pressure.
    await unloader.check()
    assert len(lane.jobs) == 1


async def test_busy_models_stay_and_idle_ones_go_per_server(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    await load(gpu1, "tiny")
    await load(gpu2, "qwen2.5:0.5b")
    lane = Lane()
    now = [time.time()]
    unloader = unloader_for(
        pool, lane, idle_unload_s=60, clock=lambda: now[0], gpu1=10**12, gpu2=10**12
    )
    lane.report(ModelActivity(model="tiny", queued=1), ModelActivity(model="qwen2.5:0.5b"))
    await unloader.check()
    assert lane.jobs == []  # first seen loaded now
    now[0] += 60
    await unloader.check()
    assert [(job.model, job.server) for job in lane.jobs] == [("qwen2.5:0.5b", "gpu2")]


async def test_a_model_used_on_one_server_only_is_unloaded_from_the_other_and_stays_there(
    pool: ModelServers, gpu1: RunningEmulator, gpu2: RunningEmulator
) -> None:
    for emulator in (gpu1, gpu2):
        await load(emulator, "tiny")
    lane = Lane()
    now = [time.time()]
    unloader = unloader_for(
        pool, lane, idle_unload_s=60, clock=lambda: now[0], gpu1=10**12, gpu2=10**12
    )
    lane.report()
    await unloader.check()
    assert lane.jobs == []  # first seen loaded on both now
    now[0] += 60
    # The lane kept running it on gpu1 (10 s ago); gpu2 has held it unused since.
    used = now[0] - 10
    lane.report(ModelActivity(model="tiny", last_used_at=used, last_used_on={"gpu1": used}))
    await unloader.check()
    [job] = lane.jobs
    assert (job.kind, job.model, job.server) == ("unload", "tiny:latest", "gpu2")
    # The lane runs it on gpu2 (Ollama's unload idiom), and gpu1 still holds the model.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gpu2.url}/api/generate", json=job.payload) as response,
    ):
        assert response.status == 200
    held = {one.server: loaded_names({"models": one.models}) for one in await pool.loaded()}
    assert held == {"gpu1": ["tiny:latest"], "gpu2": []}
