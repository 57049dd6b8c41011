"""Model management through the whole cluster: Ollama's model endpoints with the official
client, the seed's provider endpoints, model_not_found with the models that exist, and loads,
unloads and embeddings through the serial lane (never overlapping a generation)."""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory
from tests.polling import eventually
from tests.service_metrics import wait_for_metric

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def models_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "models",
        whole=True,
        CORRAL_STATUS_INTERVAL_S="0.2",
        CORRAL_PRELOAD_MODELS="qwen2.5:0.5b",
        # Unloading is exercised by its own clusters below; here it must stay out of the way.
        CORRAL_IDLE_UNLOAD_S="0",
        CORRAL_MEMORY_PRESSURE_PERCENT="0",
    ) as cluster:
        yield cluster


async def call(
    cluster: Cluster, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, bytes]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{cluster.gateway_url}{path}", data=data) as response,
    ):
        return response.status, await response.read()


async def ndjson(cluster: Cluster, path: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
    status, raw = await call(cluster, "POST", path, body)
    return status, [orjson.loads(line) for line in raw.splitlines()]


async def queue_depth(cluster: Cluster) -> int:
    status, raw = await call(cluster, "GET", "/health")
    return int(orjson.loads(raw)["queue"]["waiting"]) if status == 200 else -1


# -- Ollama's endpoints, with the official client ----------------------------------------------


async def test_pull_streams_progress_in_order_then_lists_the_model(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    statuses = [part.status async for part in await client.pull("llama3.2:1b", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert statuses.index("verifying sha256 digest") < statuses.index("writing manifest")
    listed = {m.model for m in (await client.list()).models}
    assert "llama3.2:1b" in listed
    # ...and it can be used at once: the gateway's model list was refreshed.
    answer = await client.chat(model="llama3.2:1b", messages=HELLO)
    assert answer.message.content


async def test_pull_progress_counts_up_per_layer(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    status, lines = await ndjson(models_cluster, "/api/pull", {"model": "all-minilm"})
    assert status == 200
    completed: dict[str, int] = {}
    for line in lines:
        if "digest" in line and "completed" in line:
            assert line["completed"] >= completed.get(line["digest"], 0)
            assert line["completed"] <= line["total"]
            completed[line["digest"]] = line["completed"]
    assert completed, "no byte progress was relayed"
    assert lines[-1] == {"status": "success"}


async def test_pull_without_streaming_answers_once(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    assert (await client.pull("tiny")).status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        await client.pull("no-such-model-anywhere")
    assert "file does not exist" in info.value.error


async def test_pull_of_an_unknown_model_ends_with_an_error_line(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    status, lines = await ndjson(models_cluster, "/api/pull", {"name": "no-such-model-anywhere"})
    assert status == 200
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"error": "pull model manifest: file does not exist"}


async def test_copy_create_and_delete(models_cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    assert (await client.copy("tiny", "tiny-copy")).status == "success"
    created = await client.create(model="pirate", from_="tiny", system="Talk like a pirate.")
    assert created.status == "success"
    names = {m.model for m in (await client.list()).models}
    assert {"tiny-copy:latest", "pirate:latest"} <= names
    assert (await client.delete("tiny-copy")).status == "success"
    # ollama-js sends the older `name`.
    status, raw = await call(models_cluster, "DELETE", "/api/delete", {"name": "pirate"})
    assert (status, raw) == (200, b"")
    names = {m.model for m in (await client.list()).models}
    assert not {"tiny-copy:latest", "pirate:latest"} & names


async def test_gguf_import_through_blobs_then_push(
    models_cluster: Cluster, emu: EmulatorControl, tmp_path: pathlib.Path
) -> None:
    """`ollama create` from a GGUF: the blob crosses the broker in chunks to the backend."""
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    gguf = tmp_path / "model.gguf"
    # More than two of the gateway's chunks, so the relay's ordering is exercised.
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * (10 * 1024 + 7))
    digest = await client.create_blob(gguf)
    assert digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert (await call(models_cluster, "HEAD", f"/api/blobs/{digest}"))[0] == 200
    # Already there: 200 and nothing sent on; another digest's bytes: Ollama's mismatch.
    assert await call(models_cluster, "POST", f"/api/blobs/{digest}", raw=b"x") == (200, b"")
    other = "sha256:" + "0" * 64
    assert (await call(models_cluster, "HEAD", f"/api/blobs/{other}"))[0] == 404
    status, raw = await call(models_cluster, "POST", f"/api/blobs/{other}", raw=b"abc")
    abc = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert (status, orjson.loads(raw)) == (
        400,
        {"error": f'digest mismatch, expected "{other}", got "{abc}"'},
    )
    status, raw = await call(models_cluster, "POST", "/api/blobs/sha256:nothex", raw=b"abc")
    assert (status, orjson.loads(raw)) == (400, {"error": "invalid digest format"})
    assert (await call(models_cluster, "GET", f"/api/blobs/{digest}"))[0] == 405

    created = await client.create(model="me/imported", files={"model.gguf": digest})
    assert created.status == "success"
    assert "me/imported:latest" in {m.model for m in (await client.list()).models}
    answer = await client.chat(model="me/imported", messages=HELLO)
    assert answer.message.content

    statuses = [part async for part in await client.push("me/imported", stream=True)]
    assert statuses[0].status == "retrieving manifest"
    assert [part.status for part in statuses[-2:]] == ["pushing manifest", "success"]
    weights = [part for part in statuses if part.digest == digest]
    assert weights[-1].completed == weights[-1].total == gguf.stat().st_size
    assert (await client.push("me/imported")).status == "success"
    with pytest.raises(ollama.ResponseError) as missing:
        await client.push("me/nothing")
    assert missing.value.status_code == 500
    assert missing.value.error.endswith("me/nothing/latest: no such file or directory")
    status, lines = await ndjson(models_cluster, "/api/push", {"name": "me/nothing"})
    assert status == 200
    assert lines[:2] == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
    ]
    assert "error" in lines[-1]
    status, raw = await call(models_cluster, "POST", "/api/push", {})
    assert (status, orjson.loads(raw)) == (400, {"error": "model is required"})


async def test_model_errors_pass_through_with_ollamas_texts(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    with pytest.raises(ollama.ResponseError) as deleted:
        await client.delete("no-such-model")
    assert (deleted.value.status_code, deleted.value.error) == (
        404,
        "model 'no-such-model' not found",
    )
    with pytest.raises(ollama.ResponseError) as copied:
        await client.copy("no-such-model", "anything")
    assert (copied.value.status_code, copied.value.error) == (
        404,
        'model "no-such-model" not found',
    )
    for bad in ({"model": "", "stream": False}, {"model": "Bad Name!!", "stream": False}):
        status, raw = await call(models_cluster, "POST", "/api/pull", bad)
        assert (status, orjson.loads(raw)) == (400, {"error": "invalid model name"}), bad
    for path, method, field in (
        ("/api/pull", "POST", "model"),
        ("/api/delete", "DELETE", "model"),
        ("/api/copy", "POST", "source"),
        ("/api/create", "POST", "from"),
        ("/api/embed", "POST", "model"),
    ):
        status, raw = await call(models_cluster, method, path, raw=b"")
        assert (status, orjson.loads(raw)) == (400, {"error": "missing request body"}), path
        status, raw = await call(models_cluster, method, path, {field: 7})
        assert status == 400, path
        assert orjson.loads(raw)["error"].startswith("json: cannot unmarshal number"), path


async def test_embed_and_legacy_embeddings(models_cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    embedded = await client.embed(model="nomic-embed-text", input=["first", "second"])
    assert len(embedded.embeddings) == 2
    norm = sum(x * x for x in embedded.embeddings[0]) ** 0.5
    assert abs(norm - 1.0) < 1e-6
    legacy = await client.embeddings(model="nomic-embed-text", prompt="first")
    assert len(legacy.embedding) == len(embedded.embeddings[0])
    status, raw = await call(
        models_cluster, "POST", "/api/embed", {"model": "nomic-embed-text", "input": 5}
    )
    assert (status, orjson.loads(raw)) == (400, {"error": "invalid input type"})
    status, raw = await call(models_cluster, "POST", "/api/embeddings", {"prompt": "x"})
    assert (status, orjson.loads(raw)) == (400, {"error": "model is required"})
    with pytest.raises(ollama.ResponseError) as info:
        await client.embed(model="no-such-model", input="x")
    assert (info.value.status_code, info.value.error) == (
        404,
        'model "no-such-model" not found, try pulling it first',
    )


async def test_embeddings_wait_their_turn_behind_a_generation(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.hold()
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    generation = asyncio.create_task(client.chat(model="llama3.2", messages=HELLO))
    await emu.wait(held=1)
    embedding = asyncio.create_task(client.embed(model="nomic-embed-text", input="x"))
    await eventually(lambda: _depth_is(models_cluster, 1), what="the embed queued")
    await emu.release()
    await generation
    assert len((await embedding).embeddings) == 1
    assert (await emu.stats())["max_active"] == 1


async def _depth_is(cluster: Cluster, depth: int) -> bool:
    return await queue_depth(cluster) == depth


async def test_unknown_model_lists_the_available_ones(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    status, raw = await call(models_cluster, "POST", "/api/chat", {"model": "gpt-4"})
    body = orjson.loads(raw)
    assert status == 404
    # Ollama clients read `error`; the rest is Corral's seed shape for those who look.
    assert body["error"] == "model 'gpt-4' not found"
    assert body["type"] == "model_not_found"
    assert body["details"]["requested_model"] == "gpt-4"
    assert "llama3.2:latest" in body["details"]["available_models"]
    # Nothing reached the backend: the gateway knew.
    assert not [r for r in await emu.requests("chat") if r.get("model") == "gpt-4"]


# -- the seed's provider endpoints -------------------------------------------------------------


async def test_provider_model_list(models_cluster: Cluster, emu: EmulatorControl) -> None:
    status, raw = await call(models_cluster, "GET", "/api/providers/ollama/models")
    body = orjson.loads(raw)
    assert status == 200
    assert body["total"] == len(body["models"]) > 0
    llama = next(m for m in body["models"] if m["name"] == "llama3.2:latest")
    assert {"name", "size", "modified_at", "digest", "details"} <= set(llama)
    assert llama["details"]["family"] == "llama"


async def test_provider_pull(models_cluster: Cluster, emu: EmulatorControl) -> None:
    path = "/api/providers/ollama/pull"
    status, raw = await call(models_cluster, "POST", path, {"model": "llama3.2:1b"})
    body = orjson.loads(raw)
    assert status == 200
    assert body["success"] is True
    assert body["message"] == "Model 'llama3.2:1b' pulled successfully"
    assert body["model"] == "llama3.2:1b"
    assert body["status_log"][0]["status"] == "pulling manifest"
    assert body["status_log"][-1] == {"status": "success"}

    status, raw = await call(models_cluster, "POST", path, {})
    assert status == 400
    assert orjson.loads(raw)["error"]["type"] == "invalid_request"
    status, raw = await call(models_cluster, "POST", path, raw=b"{not json")
    assert status == 400

    status, raw = await call(models_cluster, "POST", path, {"model": "no-such-model-anywhere"})
    error = orjson.loads(raw)["error"]
    assert status == 500
    assert "file does not exist" in error["message"]
    assert error["details"]["status_log"] == [{"status": "pulling manifest"}]


async def test_pulls_can_be_watched(models_cluster: Cluster, emu: EmulatorControl) -> None:
    await call(models_cluster, "POST", "/api/pull", {"model": "tiny", "stream": False})
    status, raw = await call(models_cluster, "GET", "/admin/pulls")
    assert status == 200
    pulls = orjson.loads(raw)["pulls"]
    assert any(p["model"] == "tiny" and p["state"] == "success" for p in pulls)


# -- loads and unloads through the lane --------------------------------------------------------


async def test_preload_warms_configured_models(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    await wait_for_metric(
        models_cluster, 'corral_model_operations_total{kind="load",outcome="done"} 1.0'
    )


async def test_admin_unload_waits_for_a_running_generation(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    await client.chat(model="llama3.2", messages=HELLO)
    await emu.hold()
    generation = asyncio.create_task(client.chat(model="llama3.2", messages=HELLO))
    await emu.wait(held=1)
    unload = asyncio.create_task(call(models_cluster, "POST", "/admin/models/llama3.2/unload"))
    await eventually(lambda: _depth_is(models_cluster, 1), what="the unload queued")
    assert not unload.done()
    await emu.release()
    await generation
    status, raw = await unload
    assert status == 200, raw
    assert orjson.loads(raw)["action"] == "unload"
    assert (await emu.stats())["max_active"] == 1
    assert "llama3.2:latest" not in {m.model for m in (await client.ps()).models}


async def test_unload_yields_to_queued_work_unless_forced(
    models_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=models_cluster.gateway_url)
    await emu.hold()
    first = asyncio.create_task(client.chat(model="llama3.2", messages=HELLO))
    await emu.wait(held=1)
    unload = asyncio.create_task(call(models_cluster, "POST", "/admin/models/llama3.2/unload"))
    await eventually(lambda: _depth_is(models_cluster, 1), what="the unload queued")
    second = asyncio.create_task(client.chat(model="llama3.2", messages=HELLO))
    await eventually(lambda: _depth_is(models_cluster, 2), what="the second chat queued")
    await emu.release()
    status, raw = await unload
    error = orjson.loads(raw)["error"]
    assert (status, error["type"]) == (409, "model_busy")
    await asyncio.gather(first, second)
    status, raw = await call(models_cluster, "POST", "/admin/models/llama3.2/unload?force=true")
    assert status == 200, raw


async def test_admin_model_errors(models_cluster: Cluster, emu: EmulatorControl) -> None:
    status, raw = await call(models_cluster, "POST", "/admin/models/no-such-model/load")
    error = orjson.loads(raw)["error"]
    assert (status, error["type"]) == (404, "model_not_found")
    assert "llama3.2:latest" in error["details"]["available_models"]
    status, raw = await call(models_cluster, "POST", "/admin/models/tiny/unload?force=maybe")
    assert status == 400
    status, raw = await call(models_cluster, "POST", "/admin/models/tiny/load")
    assert status == 200, raw
    assert orjson.loads(raw)["action"] == "load"


# -- unloading decided by the model manager ---------------------------------------------------


@pytest.fixture(scope="module")
def unloading_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "unloading",
        whole=True,
        CORRAL_STATUS_INTERVAL_S="0.1",
        CORRAL_IDLE_UNLOAD_S="0.3",
        CORRAL_UNLOAD_CHECK_INTERVAL_S="0.1",
        CORRAL_MEMORY_PRESSURE_PERCENT="0",
    ) as cluster:
        yield cluster


async def loaded(emu: EmulatorControl, cluster: Cluster) -> set[str | None]:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    return {m.model for m in (await client.ps()).models}


async def test_idle_models_are_unloaded_but_never_a_busy_one(
    unloading_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=unloading_cluster.gateway_url)
    await emu.hold()
    generation = asyncio.create_task(client.chat(model="llama3.2", messages=HELLO))
    await emu.wait(held=1)
    # The model is older than the idle limit and has work: the manager must hold back.
    await wait_for_metric(
        unloading_cluster,
        'corral_model_unloads_skipped_total{reason="busy"}',
        service="model-manager",
    )
    assert "llama3.2:latest" in await loaded(emu, unloading_cluster)
    await emu.release()
    await generation

    async def unloaded() -> bool:
        return "llama3.2:latest" not in await loaded(emu, unloading_cluster)

    await eventually(unloaded, what="the idle model unloaded")
    assert (await emu.stats())["max_active"] == 1


@pytest.fixture(scope="module")
def pressure_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "pressure",
        whole=True,
        CORRAL_STATUS_INTERVAL_S="0.1",
        CORRAL_IDLE_UNLOAD_S="0",
        CORRAL_UNLOAD_CHECK_INTERVAL_S="0.1",
        # Any host is "under pressure" at 1 %: every idle model goes, least recently used first.
        CORRAL_MEMORY_PRESSURE_PERCENT="1",
    ) as cluster:
        yield cluster


async def test_memory_pressure_unloads_idle_models(
    pressure_cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=pressure_cluster.gateway_url)
    await client.chat(model="tiny", messages=HELLO)

    async def unloaded() -> bool:
        return not await loaded(emu, pressure_cluster)

    await eventually(unloaded, what="the model unloaded under memory pressure")
    await wait_for_metric(
        pressure_cluster, 'corral_model_unloads_total{reason="memory"}', service="model-manager"
    )
