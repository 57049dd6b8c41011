"""The OpenAI-compatible API: server-sent event chunks with `usage` when asked and `[DONE]` at
the end, the same deterministic answers as `/api/chat`, the model list and embeddings; and
`--openai-only` serving nothing of Ollama's `/api`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from corral_emulator import EmulatorConfig, create_app, expected_reply, tokenize
from corral_emulator.testing import ClientFactory, EmulatorTestClient


def events(body: bytes) -> list[Any]:
    """The `data:` payloads of an event stream, `[DONE]` as the string."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def test_a_streamed_chat_completion_ends_with_usage_and_done(
    client: EmulatorTestClient,
) -> None:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks = events(await response.read())
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
    assert "".join(deltas) == expected_reply("hello there")
    last = chunks[-2]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["completion_tokens"] == len(tokenize(expected_reply("hello there")))
    assert last["usage"]["prompt_tokens"] > 0


async def test_max_tokens_cuts_and_a_plain_answer_has_usage(client: EmulatorTestClient) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "a b c d"}]}
    response = await client.post("/v1/chat/completions", json={**body, "max_tokens": 2})
    answer = await response.json()
    assert answer["choices"][0]["message"]["content"] == expected_reply("a b c d", 2)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2
    response = await client.post(
        "/v1/completions", json={"model": "llama3.2", "prompt": "raw text"}
    )
    assert (await response.json())["choices"][0]["text"] == expected_reply("raw text")


async def test_models_embeddings_and_an_unknown_model(client: EmulatorTestClient) -> None:
    listed = await (await client.get("/v1/models")).json()
    assert "llama3.2:latest" in [m["id"] for m in listed["data"]]
    response = await client.post(
        "/v1/embeddings", json={"model": "llama3.2", "input": ["one", "two"]}
    )
    embedded = await response.json()
    assert [e["index"] for e in embedded["data"]] == [0, 1]
    assert embedded["usage"]["prompt_tokens"] > 0
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status == 404
    assert "nope" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("path", ["/api/tags", "/api/version", "/"])
async def test_openai_only_serves_no_ollama_route(aiohttp_client: ClientFactory, path: str) -> None:
    client = await aiohttp_client(create_app(EmulatorConfig(openai_only=True)))
    assert (await client.get(path)).status == 404
    assert (await client.get("/v1/models")).status == 200
    assert (await client.get("/_emulator/stats")).status == 200
