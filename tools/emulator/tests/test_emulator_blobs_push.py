"""HEAD/POST /api/blobs/:digest, POST /api/create with `files`, and POST /api/push."""

from __future__ import annotations

import hashlib
import re

import pytest

from corral_emulator import EmulatorState, expected_reply
from corral_emulator.registry import pull_layers
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, post_stream

GGUF = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 40
NOT_GGUF = b"PK\x03\x04 a zip file"
SHORT = re.compile(r"^pushing [0-9a-f]{12}$")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def upload(client: Client, data: bytes, digest: str | None = None) -> int:
    # The Python client labels the bytes application/json; the type must not matter.
    response = await client.post(
        f"/api/blobs/{digest or digest_of(data)}",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    assert await response.read() == b""
    return response.status


# --- blobs ---


async def test_blob_upload_then_head(client: Client) -> None:
    digest = digest_of(GGUF)
    assert (await client.head(f"/api/blobs/{digest}")).status == 404
    assert await upload(client, GGUF) == 201
    head = await client.head(f"/api/blobs/{digest}")
    assert head.status == 200
    # Ollama's blob files are named sha256-<hex>: both spellings are one blob.
    assert (await client.head(f"/api/blobs/{digest.replace(':', '-')}")).status == 200
    # Already there: 200, not 201.
    assert await upload(client, GGUF) == 200


async def test_blob_digest_mismatch(client: Client, state: EmulatorState) -> None:
    claimed = digest_of(b"something else")
    response = await client.post(f"/api/blobs/{claimed}", data=GGUF)
    assert response.status == 400
    assert await response.json() == {
        "error": f'digest mismatch, expected "{claimed}", got "{digest_of(GGUF)}"'
    }
    assert (await client.head(f"/api/blobs/{claimed}")).status == 404
    assert len(state.blobs) == 0


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "g" * 64])
async def test_blob_invalid_digest(client: Client, digest: str) -> None:
    response = await client.post(f"/api/blobs/{digest}", data=b"x")
    assert response.status == 400
    assert await response.json() == {"error": "invalid digest format"}
    assert (await client.head(f"/api/blobs/{digest}")).status == 400


async def test_a_models_layers_count_as_blobs(client: Client, state: EmulatorState) -> None:
    spec = state.catalogue.find("llama3.2")
    assert spec is not None
    assert (await client.head(f"/api/blobs/{spec.layers[0].digest}")).status == 200


async def test_blob_wrong_method(client: Client) -> None:
    response = await client.get(f"/api/blobs/{digest_of(b'x')}")
    assert response.status == 405


async def test_reset_forgets_blobs(client: Client, state: EmulatorState) -> None:
    await upload(client, GGUF)
    state.reset()
    assert (await client.head(f"/api/blobs/{digest_of(GGUF)}")).status == 404


# --- create with files ---


async def test_create_from_an_uploaded_gguf(client: Client) -> None:
    digest = digest_of(GGUF)
    await upload(client, GGUF)
    lines = await post_stream(
        client,
        "/api/create",
        {"model": "mine", "files": {"model.gguf": digest}, "system": "be brief"},
    )
    assert lines[0] == {"status": "parsing GGUF"}
    assert lines[1] == {"status": f"using existing layer {digest}"}
    assert lines[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert any(line["status"].startswith("creating new layer sha256:") for line in lines)

    tags = await (await client.get("/api/tags")).json()
    created = next(m for m in tags["models"] if m["name"] == "mine:latest")
    assert created["size"] == len(GGUF)
    shown = await (await client.post("/api/show", json={"model": "mine"})).json()
    assert shown["system"] == "be brief"
    assert digest.replace(":", "-") in shown["modelfile"]
    answer = await client.post("/api/chat", json=chat_body("hi", model="mine", stream=False))
    assert (await answer.json())["message"]["content"] == expected_reply("hi")


async def test_create_sniffs_a_gguf_without_its_extension(client: Client) -> None:
    await upload(client, GGUF)
    lines = await post_stream(
        client, "/api/create", {"model": "m2", "files": {"weights": digest_of(GGUF)}}
    )
    assert lines[-1] == {"status": "success"}


async def test_create_from_files_errors(client: Client) -> None:
    missing = digest_of(b"never uploaded")
    lines = await post_stream(
        client, "/api/create", {"model": "m", "files": {"model.gguf": missing}}
    )
    blob = missing.replace(":", "-")
    assert lines == [
        {"status": "parsing GGUF"},
        {"error": f"open /root/.ollama/models/blobs/{blob}: no such file or directory"},
    ]

    await upload(client, NOT_GGUF)
    response = await client.post(
        "/api/create",
        json={"model": "m", "files": {"model.gguf": digest_of(NOT_GGUF)}, "stream": False},
    )
    assert response.status == 400
    assert await response.json() == {"error": "supplied file was not in GGUF format"}

    empty = await client.post("/api/create", json={"model": "m", "files": {"model.gguf": ""}})
    assert (empty.status, await empty.json()) == (400, {"error": "invalid digest format"})


# --- push ---


async def test_push_streams_ollamas_progress_and_lands_in_the_registry(
    client: Client, state: EmulatorState
) -> None:
    await client.post("/api/copy", json={"source": "tiny", "destination": "me/tiny:v1"})
    lines = await post_stream(client, "/api/push", {"model": "me/tiny:v1"})
    assert lines[0] == {"status": "retrieving manifest"}
    assert lines[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    spec = state.catalogue.find("me/tiny:v1")
    assert spec is not None
    layers = pull_layers(spec)
    progress = lines[1:-2]
    assert [line["digest"] for line in progress if "completed" not in line] == [
        layer.digest for layer in layers
    ]
    for line in progress:
        assert SHORT.match(line["status"]) and line["status"][8:] == line["digest"][7:19]
        assert set(line) <= {"status", "digest", "total", "completed"}
    last_per_layer = {line["digest"]: line for line in progress}
    assert all(line["completed"] == line["total"] for line in last_per_layer.values())

    # Pushed, so it can be pulled back (after a delete), and a second push finds every blob.
    await client.delete("/api/delete", json={"model": "me/tiny:v1"})
    pulled = await post_stream(client, "/api/pull", {"model": "me/tiny:v1"})
    assert pulled[-1] == {"status": "success"}
    again = await post_stream(client, "/api/push", {"name": "me/tiny:v1"})
    again_progress = again[1:-2]
    assert len(again_progress) == len(layers)
    assert all(line["completed"] == line["total"] for line in again_progress)


async def test_push_without_streaming_answers_the_last_line(client: Client) -> None:
    response = await client.post("/api/push", json={"model": "tiny", "stream": False})
    assert response.status == 200
    assert await response.json() == {"status": "success"}


async def test_push_errors(client: Client) -> None:
    lines = await post_stream(client, "/api/push", {"model": "me/nothing"})
    assert lines == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
        {
            "error": "open /root/.ollama/models/manifests/registry.ollama.ai/me/nothing/latest: "
            "no such file or directory"
        },
    ]
    response = await client.post("/api/push", json={"model": "me/nothing", "stream": False})
    assert response.status == 500
    assert await response.json() == {
        "error": "open /root/.ollama/models/manifests/registry.ollama.ai/me/nothing/latest: "
        "no such file or directory"
    }
    insecure = await post_stream(client, "/api/push", {"model": "http://host:5000/me/tiny"})
    assert insecure == [{"status": "retrieving manifest"}, {"error": "insecure protocol http"}]

    nameless = await client.post("/api/push", json={})
    assert (nameless.status, await nameless.json()) == (400, {"error": "model is required"})
    empty = await client.post("/api/push")
    assert (empty.status, await empty.json()) == (400, {"error": "missing request body"})
