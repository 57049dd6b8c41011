"""DELETE /api/delete, POST /api/copy and POST /api/create over raw HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from corral_emulator import EmulatorState, count_message_tokens
from corral_emulator.registry import MANIFEST_NOT_FOUND
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, post_stream


async def tags_by_name(client: Client) -> dict[str, dict[str, Any]]:
    tags = await (await client.get("/api/tags")).json()
    return {model["name"]: model for model in tags["models"]}


async def show(client: Client, model: str) -> dict[str, Any]:
    response = await client.post("/api/show", json={"model": model})
    assert response.status == 200
    shown: dict[str, Any] = await response.json()
    return shown


# --- delete ---


async def test_delete_answers_an_empty_200(client: Client, state: EmulatorState) -> None:
    response = await client.delete("/api/delete", json={"model": "TINY"})
    assert response.status == 200
    assert await response.read() == b""
    assert "Content-Type" not in response.headers
    assert "tiny:latest" not in await tags_by_name(client)
    assert (await client.post("/api/show", json={"model": "tiny"})).status == 404
    assert state.stats()["deletes"] == 1


async def test_delete_accepts_the_deprecated_name_field(client: Client) -> None:
    assert (await client.delete("/api/delete", json={"name": "tiny"})).status == 200


async def test_deleting_a_loaded_model_unloads_it(client: Client, state: EmulatorState) -> None:
    await client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    assert state.stats()["loaded"] == ["tiny:latest"]
    await client.delete("/api/delete", json={"model": "tiny"})
    assert await (await client.get("/api/ps")).json() == {"models": []}


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"model": "missing"}, 404, "model 'missing' not found"),
        ({"model": "Missing:7B"}, 404, "model 'Missing:7B' not found"),
        ({}, 400, 'name "" is invalid'),
        ({"model": "bad name"}, 400, 'name "bad name" is invalid'),
    ],
)
async def test_delete_errors(client: Client, body: dict[str, Any], status: int, error: str) -> None:
    response = await client.delete("/api/delete", json=body)
    assert response.status == status
    assert await response.json() == {"error": error}


async def test_delete_body_errors(client: Client) -> None:
    empty = await client.delete("/api/delete")
    assert (empty.status, await empty.json()) == (400, {"error": "missing request body"})
    assert (await client.post("/api/delete", json={"model": "tiny"})).status == 405


# --- copy ---


async def test_copy_answers_an_empty_200_and_adds_the_model(
    client: Client, state: EmulatorState
) -> None:
    response = await client.post(
        "/api/copy", json={"source": "LLAMA3.2", "destination": "my-llama:v1"}
    )
    assert response.status == 200
    assert await response.read() == b""
    tags = await tags_by_name(client)
    assert next(iter(tags)) == "my-llama:v1"  # newest first
    # Same manifest, so the same digest and size.
    assert tags["my-llama:v1"]["digest"] == tags["llama3.2:latest"]["digest"]
    assert tags["my-llama:v1"]["size"] == tags["llama3.2:latest"]["size"]
    assert (await show(client, "my-llama:v1"))["model_info"]["llama.context_length"] == 4096
    chat = await client.post("/api/chat", json=chat_body(model="my-llama:v1", stream=False))
    assert (await chat.json())["model"] == "my-llama:v1"
    assert state.stats()["copies"] == 1


async def test_copy_overwrites_the_destination(client: Client) -> None:
    await client.post("/api/copy", json={"source": "qwen2.5:0.5b", "destination": "tiny"})
    assert (await show(client, "tiny"))["details"]["family"] == "qwen2"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
        ({"source": "", "destination": "x"}, 400, 'source "" is invalid'),
        ({"source": "a b", "destination": "x"}, 400, 'source "a b" is invalid'),
        ({"source": "tiny"}, 400, 'destination "" is invalid'),
        # Both names are checked before the source is looked up.
        ({"source": "nope", "destination": "x:"}, 400, 'destination "x:" is invalid'),
    ],
)
async def test_copy_errors(client: Client, body: dict[str, Any], status: int, error: str) -> None:
    response = await client.post("/api/copy", json=body)
    assert response.status == status
    assert await response.json() == {"error": error}


# --- create ---


async def test_create_from_a_local_model_streams_layer_statuses(
    client: Client, state: EmulatorState
) -> None:
    base = state.catalogue.find("llama3.2")
    assert base is not None
    body = {"model": "mario", "from": "llama3.2", "system": "You are Mario."}
    lines = await post_stream(client, "/api/create", body)
    statuses = [line["status"] for line in lines]
    reused = [f"using existing layer {layer.digest}" for layer in base.layers]
    # The base's layers are reused; the new system layer goes in before the parameters,
    # which Ollama rewrites (unchanged, so that blob exists already).
    assert statuses[:3] == reused[:3]
    assert statuses[3].startswith("creating new layer sha256:")
    assert statuses[4:] == [reused[3], "writing manifest", "success"]
    assert all(set(line) == {"status"} for line in lines)
    assert state.stats()["creates"] == 1


async def test_created_model_shows_its_system_and_parameters(client: Client) -> None:
    body = {
        "model": "mario:latest",
        "from": "llama3.2",
        "system": "You are Mario.",
        "parameters": {"temperature": 0.7, "num_ctx": 1024},
        "license": ["MIT", "Apache"],
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "stream": False,
    }
    response = await client.post("/api/create", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert await response.json() == {"status": "success"}

    shown = await show(client, "mario")
    assert shown["system"] == "You are Mario."
    assert shown["parameters"].splitlines() == [
        "num_ctx                        1024",
        'stop                           "<|start_header_id|>"',
        'stop                           "<|eot_id|>"',
        "temperature                    0.7",
    ]
    assert shown["license"].split("\n")[1:] == ["MIT", "Apache"]
    assert shown["messages"] == body["messages"]
    assert 'SYSTEM """You are Mario."""' in shown["modelfile"]
    assert shown["details"]["family"] == "llama"
    base = await show(client, "llama3.2")
    assert "system" not in base and "messages" not in base

    tags = await tags_by_name(client)
    assert tags["mario:latest"]["digest"] != tags["llama3.2:latest"]["digest"]


async def test_created_model_applies_its_system_parameters_and_messages(
    client: Client,
) -> None:
    await client.post(
        "/api/create",
        json={
            "model": "mario",
            "from": "llama3.2",
            "system": "You are Mario.",
            "parameters": {"num_ctx": 1024, "num_predict": 2},
            "messages": [{"role": "user", "content": "earlier"}],
            "stream": False,
        },
    )
    response = await client.post(
        "/api/chat", json=chat_body("one two three", "mario", stream=False)
    )
    answer = await response.json()
    assert answer["message"]["content"] == "Echo: one"  # num_predict 2
    assert answer["done_reason"] == "length"
    sent = [
        {"role": "system", "content": "You are Mario."},
        {"role": "user", "content": "earlier"},
        {"role": "user", "content": "one two three"},
    ]
    assert answer["prompt_eval_count"] == count_message_tokens(sent)
    (runner,) = [r for r in (await (await client.get("/api/ps")).json())["models"]]
    assert runner["context_length"] == 1024


async def test_create_from_an_unknown_model_pulls_it_first(
    client: Client, state: EmulatorState
) -> None:
    lines = await post_stream(client, "/api/create", {"model": "mini", "from": "all-minilm"})
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses.count("success") == 2  # the pull's, then the create's
    assert statuses[-2:] == ["writing manifest", "success"]
    tags = await tags_by_name(client)
    assert {"all-minilm:latest", "mini:latest"} <= set(tags)
    assert state.stats()["pulls_completed"] == 1


async def test_create_from_a_model_nobody_has(client: Client) -> None:
    body = {"model": "mini", "from": "nothing-like-it"}
    lines = await post_stream(client, "/api/create", body)
    assert lines == [{"status": "pulling manifest"}, {"error": MANIFEST_NOT_FOUND}]
    failed = await client.post("/api/create", json={**body, "stream": False})
    assert failed.status == 500
    assert await failed.json() == {"error": MANIFEST_NOT_FOUND}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"model": "m"}, "neither 'from' or 'files' was specified"),
        ({"model": "m", "from": "bad name"}, "invalid model name"),
        ({"model": "m", "files": {}}, "unknown type"),
        ({"model": "m", "files": {"weights": "sha256:" + "a" * 64}}, "unknown type"),
    ],
)
async def test_create_request_errors_before_any_line_are_400(
    client: Client, body: dict[str, Any], error: str, stream: bool
) -> None:
    response = await client.post("/api/create", json={**body, "stream": stream})
    assert response.status == 400
    # They come through the progress channel, which labels them bare application/json.
    assert response.headers["Content-Type"] == "application/json"
    assert await response.json() == {"error": error}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"from": "tiny"}, "invalid model name"),
        ({"model": "bad name", "from": "tiny"}, "invalid model name"),
        ({"model": "m", "files": {"../x.gguf": "sha256:00"}}, "file path must be relative"),
    ],
)
async def test_create_validation_errors(client: Client, body: dict[str, Any], error: str) -> None:
    response = await client.post("/api/create", json=body)
    assert response.status == 400
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {"error": error}


async def test_create_from_files_fails_for_want_of_blobs(client: Client) -> None:
    digest = "sha256:" + "b" * 64
    lines = await post_stream(
        client, "/api/create", {"model": "m", "files": {"model.gguf": digest}}
    )
    assert lines == [
        {"status": "parsing GGUF"},
        {"error": f"open /root/.ollama/models/blobs/sha256-{'b' * 64}: no such file or directory"},
    ]


@pytest.mark.parametrize(
    ("base", "quantize", "error"),
    [
        ("llama3.2", "q8_0", "quantization is only supported for F16 and F32 models"),
        (
            "nomic-embed-text",
            "q2_k",
            "unsupported quantization type Q2_K - supported types are F32, F16, Q4_K_S, "
            "Q4_K_M, Q8_0",
        ),
    ],
)
async def test_quantize_errors_are_500(
    client: Client, base: str, quantize: str, error: str
) -> None:
    body = {"model": "q", "from": base, "quantize": quantize}
    response = await client.post("/api/create", json=body)
    assert response.status == 500
    assert await response.json() == {"error": error}


async def test_quantizing_a_float_model(client: Client) -> None:
    body = {"model": "nomic-q8", "from": "nomic-embed-text", "quantize": "q8_0"}
    lines = await post_stream(client, "/api/create", body)
    quantizing = [line for line in lines if line["status"] == "quantizing F16 model to Q8_0"]
    assert quantizing and quantizing[-1]["completed"] == quantizing[-1]["total"]
    assert {line["digest"] for line in quantizing} == {"0000000000000000000"}
    statuses = [line["status"] for line in lines]
    assert statuses[len(quantizing)] == "verifying conversion"
    assert statuses[len(quantizing) + 1].startswith("creating new layer sha256:")
    tags = await tags_by_name(client)
    assert tags["nomic-q8:latest"]["details"]["quantization_level"] == "Q8_0"
    assert tags["nomic-q8:latest"]["size"] < tags["nomic-embed-text:latest"]["size"]


async def test_bad_license_fails_when_the_model_is_written(client: Client) -> None:
    response = await client.post("/api/create", json={"model": "m", "from": "tiny", "license": [1]})
    assert response.status == 500
    assert await response.json() == {
        "error": "json: cannot unmarshal number into Go value of type string"
    }


async def test_create_type_errors(client: Client) -> None:
    response = await client.post("/api/create", json={"model": "m", "files": {"a": 1}})
    assert response.status == 400
    assert await response.json() == {
        "error": "json: cannot unmarshal number into Go struct field CreateRequest.files "
        "of type string"
    }
