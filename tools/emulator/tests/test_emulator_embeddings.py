"""POST /api/embed and the legacy POST /api/embeddings over raw HTTP."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from corral_emulator import EmulatorState, normalized_embedding, raw_embedding, tokenize
from corral_emulator.embedding import to_float32
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import wait_for_state

EMBED_KEYS = {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}


async def embed(client: Client, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/embed", json=body)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    answer: dict[str, Any] = await response.json()
    return answer


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


async def test_embed_a_string(client: Client) -> None:
    answer = await embed(client, model="nomic-embed-text", input="The sky is blue")
    assert set(answer) == EMBED_KEYS
    assert answer["model"] == "nomic-embed-text"
    (vector,) = answer["embeddings"]
    assert len(vector) == 768
    assert math.isclose(norm(vector), 1.0, abs_tol=1e-5)
    assert vector == pytest.approx(normalized_embedding("The sky is blue", 768), abs=1e-7)
    assert answer["prompt_eval_count"] == len(tokenize("The sky is blue"))
    assert answer["total_duration"] >= answer["load_duration"] > 0


async def test_embed_a_list_is_deterministic_and_word_based(client: Client) -> None:
    texts = ["blue sky", "the blue sky today", "grilled cheese sandwich"]
    first = (await embed(client, model="nomic-embed-text", input=texts))["embeddings"]
    again = (await embed(client, model="NOMIC-EMBED-TEXT:latest", input=texts))["embeddings"]
    assert first == again
    assert len(first) == 3
    # Shared words pull vectors together; that is what makes search demos plausible.
    assert cosine(first[0], first[1]) > cosine(first[0], first[2])


async def test_floats_look_like_go_float32(client: Client) -> None:
    response = await client.post("/api/embed", json={"model": "tiny", "input": "x"})
    text = await response.text()
    numbers = text.split("[[", 1)[1].split("]]", 1)[0].split(",")
    # Go's float32 encoding: at most 9 significant digits, never float64-long.
    assert max(len(number.lstrip("-").replace(".", "").lstrip("0")) for number in numbers) <= 9
    # ... and each reads back as exactly the float32 the emulator computed.
    assert [to_float32(float(number)) for number in numbers] == normalized_embedding("x", 288)


async def test_dimensions_truncate_then_renormalise(client: Client) -> None:
    answer = await embed(client, model="nomic-embed-text", input="hello", dimensions=8)
    (vector,) = answer["embeddings"]
    assert len(vector) == 8
    assert math.isclose(norm(vector), 1.0, abs_tol=1e-5)
    full = normalized_embedding("hello", 768)
    expected = [value / norm(full[:8]) for value in full[:8]]
    assert vector == pytest.approx(expected, abs=1e-6)
    # Zero or more than the model has: ignored.
    for dimensions in (0, 5000):
        answer = await embed(client, model="nomic-embed-text", input="hi", dimensions=dimensions)
        assert len(answer["embeddings"][0]) == 768


async def test_any_model_embeds_with_its_own_length(client: Client) -> None:
    answer = await embed(client, model="qwen2.5:0.5b", input="hi")
    assert len(answer["embeddings"][0]) == 896


@pytest.mark.parametrize("body", [{}, {"input": ""}, {"input": []}])
async def test_empty_input_loads_the_model(
    client: Client, state: EmulatorState, body: dict[str, Any]
) -> None:
    answer = await embed(client, model="nomic-embed-text", keep_alive="1h", **body)
    assert answer == {"model": "nomic-embed-text", "embeddings": []}
    (loaded,) = (await (await client.get("/api/ps")).json())["models"]
    assert loaded["name"] == "nomic-embed-text:latest"
    assert state.runners.loaded()[0].keep_alive_ns == 3600 * 10**9
    stats = state.stats()
    assert (stats["load_requests"], stats["embeds"], stats["generations"]) == (1, 0, 0)


async def test_keep_alive_zero_unloads_after_embedding(client: Client) -> None:
    await embed(client, model="nomic-embed-text", input="x", keep_alive=0)
    assert await (await client.get("/api/ps")).json() == {"models": []}


@pytest.mark.parametrize("value", [3, [1, 2], ["a", None], {"a": "b"}, True])
async def test_wrong_input_type_is_400(client: Client, value: object) -> None:
    response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": value})
    assert response.status == 400
    assert await response.json() == {"error": "invalid input type"}


@pytest.mark.parametrize("model", ["nope", "", "Nope:7B"])
async def test_unknown_model_is_the_schedulers_404(client: Client, model: str) -> None:
    response = await client.post("/api/embed", json={"model": model, "input": "x"})
    assert response.status == 404
    assert await response.json() == {"error": f'model "{model}" not found, try pulling it first'}


async def test_truncation(client: Client) -> None:
    text = " ".join(f"w{n}" for n in range(300))  # nomic-embed-text has a 2048 window
    body = {"model": "nomic-embed-text", "input": text, "options": {"num_ctx": 100}}
    cut = await embed(client, **body)
    assert cut["prompt_eval_count"] == 100
    assert cut["embeddings"][0] == pytest.approx(
        normalized_embedding("".join(tokenize(text)[:100]), 768), abs=1e-7
    )
    refused = await client.post("/api/embed", json={**body, "truncate": False})
    assert refused.status == 400
    assert await refused.json() == {"error": "the input length exceeds the context length"}


async def test_body_errors(client: Client) -> None:
    empty = await client.post("/api/embed", data=b"")
    assert await empty.json() == {"error": "missing request body"}
    wrong = await client.post("/api/embed", json={"model": "x", "dimensions": "8"})
    assert await wrong.json() == {
        "error": "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions "
        "of type int"
    }


async def test_embedding_is_backend_work(client: Client, state: EmulatorState) -> None:
    state.gate.hold()
    request = asyncio.create_task(
        client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    )
    await wait_for_state(state, lambda: state.stats()["embeds_held"] == 1)
    stats = state.stats()
    assert (stats["active"], stats["embeds"], stats["held"]) == (1, 1, 0)
    assert stats["active_by_model"] == {"nomic-embed-text:latest": 1}
    state.gate.release()
    assert (await request).status == 200
    stats = state.stats()
    assert (stats["active"], stats["max_active"], stats["generations"]) == (0, 1, 0)
    assert stats["operations_by_kind"] == {"generation": 0, "load": 0, "unload": 0, "embed": 1}


async def test_embedding_models_do_not_chat_or_generate(client: Client) -> None:
    chat = await client.post(
        "/api/chat",
        json={"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]},
    )
    assert chat.status == 400
    assert await chat.json() == {"error": '"nomic-embed-text" does not support chat'}
    generate = await client.post("/api/generate", json={"model": "nomic-embed-text", "prompt": "x"})
    assert await generate.json() == {"error": '"nomic-embed-text" does not support generate'}


# --- legacy /api/embeddings ---


async def test_legacy_embeddings_are_not_normalised(client: Client) -> None:
    response = await client.post(
        "/api/embeddings", json={"model": "nomic-embed-text", "prompt": "hello world"}
    )
    assert response.status == 200
    answer = await response.json()
    assert set(answer) == {"embedding"}
    assert answer["embedding"] == raw_embedding("hello world", 768)
    assert not math.isclose(norm(answer["embedding"]), 1.0, abs_tol=1e-3)
    normalised = await embed(client, model="nomic-embed-text", input="hello world")
    assert normalised["embeddings"][0] == pytest.approx(
        [value / norm(answer["embedding"]) for value in answer["embedding"]], abs=1e-6
    )


async def test_legacy_empty_prompt_loads(client: Client, state: EmulatorState) -> None:
    response = await client.post("/api/embeddings", json={"model": "nomic-embed-text"})
    assert await response.json() == {"embedding": []}
    assert state.stats()["loaded"] == ["nomic-embed-text:latest"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"prompt": "x"}, 400, "model is required"),
        ({"model": "bad name", "prompt": "x"}, 400, "model is required"),
        ({"model": "nope", "prompt": "x"}, 404, 'model "nope" not found, try pulling it first'),
    ],
)
async def test_legacy_errors(client: Client, body: dict[str, Any], status: int, error: str) -> None:
    response = await client.post("/api/embeddings", json=body)
    assert response.status == status
    assert await response.json() == {"error": error}
