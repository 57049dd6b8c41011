from __future__ import annotations

import pytest

from corral_emulator import EmulatorState
from corral_emulator.durations import NANOS_PER_SECOND
from corral_emulator.testing import RFC3339_UTC, chat_body
from corral_emulator.testing import EmulatorTestClient as Client


async def test_root_and_head(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert await response.text() == "Ollama is running"
    assert (await client.head("/")).status == 200


async def test_version(client: Client) -> None:
    response = await client.get("/api/version")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {"version": "0.12.6"}
    assert (await client.head("/api/version")).status == 200


async def test_tags_lists_the_catalogue(client: Client) -> None:
    response = await client.get("/api/tags")
    assert response.status == 200
    models = (await response.json())["models"]
    by_name = {model["name"]: model for model in models}
    assert {"llama3.2:latest", "qwen2.5:0.5b", "tiny:latest", "nomic-embed-text:latest"} <= set(
        by_name
    )
    llama = by_name["llama3.2:latest"]
    assert set(llama) == {"name", "model", "modified_at", "size", "digest", "details"}
    assert llama["model"] == "llama3.2:latest"
    assert len(llama["digest"]) == 64
    assert isinstance(llama["size"], int)
    assert llama["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }
    assert (await client.head("/api/tags")).status == 200


@pytest.mark.parametrize(
    ("name", "family", "context_length"),
    [
        ("llama3.2", "llama", 4096),
        ("LLAMA3.2:latest", "llama", 4096),
        ("tiny", "llama", 256),
        ("qwen2.5:0.5b", "qwen2", 32768),
    ],
)
async def test_show(client: Client, name: str, family: str, context_length: int) -> None:
    response = await client.post("/api/show", json={"model": name})
    assert response.status == 200
    shown = await response.json()
    assert shown["model_info"][f"{family}.context_length"] == context_length
    assert shown["model_info"]["general.architecture"] == family
    assert shown["details"]["family"] == family
    assert "completion" in shown["capabilities"]
    for key in ("modified_at", "parameters", "template", "license", "modelfile"):
        assert isinstance(shown[key], str)


async def test_show_accepts_deprecated_name(client: Client) -> None:
    response = await client.post("/api/show", json={"name": "tiny"})
    assert response.status == 200


async def test_show_errors(client: Client) -> None:
    missing = await client.post("/api/show", json={})
    assert missing.status == 400
    assert await missing.json() == {"error": "model is required"}
    unknown = await client.post("/api/show", json={"model": "Nope:1b"})
    assert unknown.status == 404
    assert await unknown.json() == {"error": "model 'Nope:1b' not found"}
    empty = await client.post("/api/show", data=b"")
    assert empty.status == 400
    assert await empty.json() == {"error": "missing request body"}


async def test_ps_lists_loaded_models_longest_expiry_first(client: Client) -> None:
    assert await (await client.get("/api/ps")).json() == {"models": []}
    await client.post("/api/chat", json=chat_body(stream=False, keep_alive="1h"))
    await client.post(
        "/api/generate", json={"model": "tiny", "prompt": "x", "stream": False, "keep_alive": -1}
    )
    await client.post("/api/chat", json=chat_body(model="qwen2.5:0.5b", stream=False))
    models = (await (await client.get("/api/ps")).json())["models"]
    assert [model["name"] for model in models] == ["tiny:latest", "llama3.2:latest", "qwen2.5:0.5b"]
    tiny, llama, _ = models
    assert set(tiny) == {
        "name",
        "model",
        "size",
        "size_vram",
        "digest",
        "details",
        "expires_at",
        "context_length",
    }
    assert tiny["context_length"] == 256
    assert llama["context_length"] == 4096
    assert tiny["expires_at"].startswith("23")  # keep_alive -1: Go's MaxInt64, ~year 2318
    assert RFC3339_UTC.match(llama["expires_at"])


async def test_keep_alive_sets_expiry(client: Client, state: EmulatorState) -> None:
    await client.post("/api/chat", json=chat_body(stream=False, keep_alive=600))
    (runner,) = state.runners.loaded()
    assert runner.keep_alive_ns == 600 * NANOS_PER_SECOND
    # Absent keep_alive keeps the runner's current duration.
    await client.post("/api/chat", json=chat_body(stream=False))
    assert runner.keep_alive_ns == 600 * NANOS_PER_SECOND
    # An already-elapsed keep_alive expires the model the next time anyone looks.
    await client.post("/api/chat", json=chat_body(stream=False, keep_alive="1ns"))
    assert await (await client.get("/api/ps")).json() == {"models": []}


async def test_unknown_path_is_gin_plain_text_404(client: Client) -> None:
    for path in ("/api/nope", "/v2/whatever"):
        response = await client.get(path)
        assert response.status == 404
        assert response.headers["Content-Type"] == "text/plain"
        assert await response.text() == "404 page not found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/chat"),
        ("GET", "/api/generate"),
        ("POST", "/api/tags"),
        ("POST", "/"),
        ("DELETE", "/api/show"),
        ("HEAD", "/api/ps"),
    ],
)
async def test_wrong_method_is_gin_plain_text_405(client: Client, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert response.status == 405
    assert response.headers["Content-Type"] == "text/plain"
    if method != "HEAD":
        assert await response.text() == "405 method not allowed"
