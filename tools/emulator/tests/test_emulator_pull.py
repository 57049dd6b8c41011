from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from corral_emulator import EmulatorState
from corral_emulator.registry import MANIFEST_NOT_FOUND, pull_layers
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, parse_ndjson, post_stream, wait_for_state

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


async def tag_names(client: Client) -> list[str]:
    tags = await (await client.get("/api/tags")).json()
    return [model["name"] for model in tags["models"]]


async def test_pull_streams_ollamas_progress_sequence(client: Client, state: EmulatorState) -> None:
    lines = await post_stream(client, "/api/pull", {"model": "llama3.2:1b"})
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-3:] == [
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    layers = pull_layers(state.registry.find("llama3.2:1b"))  # type: ignore[arg-type]
    progress = lines[1:-3]
    assert {line["digest"] for line in progress} == {layer.digest for layer in layers}
    for line in progress:
        assert DIGEST.match(line["digest"])
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert set(line) <= {"status", "digest", "total", "completed"}

    weights = [line for line in progress if line["digest"] == layers[0].digest]
    # First the size alone (completed 0 is omitempty), then `pull_steps` rising updates.
    assert weights[0] == {
        "status": weights[0]["status"],
        "digest": layers[0].digest,
        "total": layers[0].size,
    }
    completed = [line["completed"] for line in weights[1:]]
    assert len(completed) == state.config.pull_steps
    assert completed == sorted(completed) and completed[-1] == layers[0].size
    # The last line of every layer says it is complete.
    last_per_layer = {line["digest"]: line for line in progress}
    assert all(line["completed"] == line["total"] for line in last_per_layer.values())


async def test_pulled_model_is_listed_shown_and_usable(
    client: Client, state: EmulatorState
) -> None:
    assert "llama3.2:1b" not in await tag_names(client)
    await post_stream(client, "/api/pull", {"model": "llama3.2:1b"})
    assert (await tag_names(client))[0] == "llama3.2:1b"  # most recently modified first
    tags = await (await client.get("/api/tags")).json()
    assert tags["models"][0]["modified_at"] > "2025-10-02"
    shown = await (await client.post("/api/show", json={"model": "llama3.2:1b"})).json()
    assert shown["details"]["parameter_size"] == "1.2B"
    reply = await client.post("/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"})
    assert parse_ndjson(await reply.read())[-1]["done"] is True


async def test_pulling_an_embedding_model(client: Client) -> None:
    await post_stream(client, "/api/pull", {"name": "all-minilm"})
    shown = await (await client.post("/api/show", json={"model": "all-minilm"})).json()
    assert shown["capabilities"] == ["embedding"]
    embedded = await client.post("/api/embed", json={"model": "all-minilm", "input": "hi"})
    assert len((await embedded.json())["embeddings"][0]) == 384


async def test_repull_reports_every_blob_complete_at_once(client: Client) -> None:
    lines = await post_stream(client, "/api/pull", {"model": "llama3.2"})
    progress = lines[1:-3]
    assert len({line["digest"] for line in progress}) == len(progress)
    assert all(line["completed"] == line["total"] for line in progress)


async def test_unknown_model_streams_the_manifest_error_on_a_200(client: Client) -> None:
    lines = await post_stream(client, "/api/pull", {"model": "no-such-model"})
    assert lines == [{"status": "pulling manifest"}, {"error": MANIFEST_NOT_FOUND}]
    assert "no-such-model:latest" not in await tag_names(client)


async def test_non_streaming_pull_answers_the_last_object(client: Client) -> None:
    response = await client.post("/api/pull", json={"model": "all-minilm", "stream": False})
    assert response.status == 200
    # waitForStream sets a bare content type before c.JSON.
    assert response.headers["Content-Type"] == "application/json"
    assert await response.json() == {"status": "success"}
    assert "all-minilm:latest" in await tag_names(client)

    failed = await client.post("/api/pull", json={"model": "nope", "stream": False})
    assert failed.status == 500
    assert failed.headers["Content-Type"] == "application/json"
    assert await failed.json() == {"error": MANIFEST_NOT_FOUND}


@pytest.mark.parametrize(
    "body",
    [{}, {"model": ""}, {"model": "bad name"}, {"model": "llama3.2:"}, {"name": "a/b/c/d/e"}],
)
async def test_invalid_or_missing_names_are_400(client: Client, body: dict[str, Any]) -> None:
    response = await client.post("/api/pull", json=body)
    assert response.status == 400
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {"error": "invalid model name"}


async def test_body_errors(client: Client) -> None:
    empty = await client.post("/api/pull", data=b"")
    assert (empty.status, await empty.json()) == (400, {"error": "missing request body"})
    wrong = await client.post("/api/pull", json={"model": "x", "stream": "yes"})
    assert await wrong.json() == {
        "error": "json: cannot unmarshal string into Go struct field PullRequest.stream "
        "of type bool"
    }


async def test_registry_and_steps_are_configurable(client: Client, state: EmulatorState) -> None:
    registry = [{"name": "custom:7b", "context_length": 1024, "size": 1000}]
    changed = await client.post(
        "/_emulator/config", json={"registry": registry, "pull_steps": 2, "pull_step_ms": 0}
    )
    assert changed.status == 200
    config = await changed.json()
    assert (config["pull_steps"], config["pull_step_ms"]) == (2, 0)
    assert [spec["name"] for spec in config["registry"]] == ["custom:7b"]
    lines = await post_stream(client, "/api/pull", {"model": "CUSTOM:7b"})
    weights = [line for line in lines if line.get("total") == 1000]
    assert [line.get("completed") for line in weights] == [None, 500, 1000]
    assert "custom:7b" in await tag_names(client)
    # What used to be pullable no longer is.
    missing = await post_stream(client, "/api/pull", {"model": "all-minilm"})
    assert missing[-1] == {"error": MANIFEST_NOT_FOUND}


@pytest.mark.parametrize("body", [{"pull_steps": 0}, {"pull_steps": 1.5}, {"registry": {}}])
async def test_bad_pull_config_is_rejected(client: Client, body: dict[str, Any]) -> None:
    assert (await client.post("/_emulator/config", json=body)).status == 400


async def test_hold_keeps_a_pull_running(client: Client, state: EmulatorState) -> None:
    state.gate.hold()
    response = await client.post("/api/pull", json={"model": "llama3.2:1b"})
    await wait_for_state(state, lambda: state.stats()["pulls_held"] == 1)
    stats = state.stats()
    assert (stats["pulling"], stats["held"]) == (1, 0)
    # The client has the manifest line and the weights' size before the hold.
    assert await response.content.readline() == b'{"status":"pulling manifest"}\n'
    assert b'"total"' in await response.content.readline()
    state.gate.release()
    rest = parse_ndjson(await response.content.read())
    assert rest[-1] == {"status": "success"}
    stats = state.stats()
    assert (stats["pulling"], stats["pulls_completed"], stats["pulls_held"]) == (0, 1, 0)


async def test_disconnect_mid_pull_adds_nothing(client: Client, state: EmulatorState) -> None:
    state.gate.hold()
    response = await client.post("/api/pull", json={"model": "llama3.2:1b"})
    await wait_for_state(state, lambda: state.stats()["pulls_held"] == 1)
    response.close()
    await wait_for_state(state, lambda: state.activity.management.pulls_cancelled == 1)
    state.gate.release()
    assert state.activity.management.pulling == 0
    assert "llama3.2:1b" not in await tag_names(client)


async def test_pulls_run_beside_generations_without_counting_as_active(
    client: Client, state: EmulatorState
) -> None:
    state.gate.hold()
    chat = asyncio.create_task(client.post("/api/chat", json=chat_body(stream=False)))
    pull = asyncio.create_task(client.post("/api/pull", json={"model": "all-minilm"}))
    await wait_for_state(
        state, lambda: state.gate.waiting == 1 and state.stats()["pulls_held"] == 1
    )
    stats = state.stats()
    assert (stats["active"], stats["pulling"]) == (1, 1)
    state.gate.release()
    assert (await chat).status == 200
    assert parse_ndjson(await (await pull).read())[-1] == {"status": "success"}
    stats = state.stats()
    assert (stats["max_active"], stats["pulls"], stats["operations"]) == (1, 1, 1)


async def test_reset_restores_the_configured_models(client: Client) -> None:
    await post_stream(client, "/api/pull", {"model": "llama3.2:1b"})
    await client.delete("/api/delete", json={"model": "tiny"})
    stats = await (await client.post("/_emulator/reset")).json()
    assert (stats["pulls"], stats["deletes"]) == (0, 0)
    names = await tag_names(client)
    assert "llama3.2:1b" not in names
    assert "tiny:latest" in names
