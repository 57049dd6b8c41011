"""The official `ollama` Python client against the emulator on a real port."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import ollama
import pytest
from aiohttp.test_utils import TestServer

from corral_emulator import (
    STATE_KEY,
    EmulatorConfig,
    EmulatorControl,
    EmulatorState,
    create_app,
    expected_reply,
    normalized_embedding,
    raw_embedding,
    reply_tokens,
    running_emulator,
)
from corral_emulator.failures import FailurePlan
from corral_emulator.registry import MANIFEST_NOT_FOUND


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    test_server = TestServer(create_app(EmulatorConfig()))
    await test_server.start_server()
    yield test_server
    await test_server.close()


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[ollama.AsyncClient]:
    api = ollama.AsyncClient(host=str(server.make_url("")))
    yield api
    await api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def state(server: TestServer) -> EmulatorState:
    return server.app[STATE_KEY]


async def test_chat(client: ollama.AsyncClient, state: EmulatorState) -> None:
    messages = [
        {"role": "user", "content": "remember this"},
        {"role": "assistant", "content": "Echo: remember this"},
        {"role": "user", "content": "what did I say?"},
    ]
    answer = await client.chat(model="llama3.2", messages=messages)
    assert answer.message.content == expected_reply("what did I say?")
    assert answer.model == "llama3.2"
    assert answer.done and answer.done_reason == "stop"
    assert answer.eval_count == len(reply_tokens("what did I say?"))
    # What the client really sent: full history, explicit stream false, empty tools.
    (sent,) = state.requests.bodies("chat")
    assert sent["messages"] == messages
    assert sent["stream"] is False
    assert sent["tools"] == []


async def test_chat_stream(client: ollama.AsyncClient) -> None:
    parts = [
        part
        async for part in await client.chat(
            model="tiny",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            options={"num_predict": 3},
        )
    ]
    assert "".join(part.message.content or "" for part in parts) == "Echo: one two"
    assert parts[-1].done_reason == "length"
    assert all(not part.done for part in parts[:-1])


async def test_generate(client: ollama.AsyncClient) -> None:
    answer = await client.generate(model="qwen2.5:0.5b", prompt="why is the sky blue")
    assert answer.response == expected_reply("why is the sky blue")
    assert answer.context
    chunks = [c async for c in await client.generate(model="tiny", prompt="hi", stream=True)]
    assert "".join(c.response or "" for c in chunks) == "Echo: hi"


async def test_list_show_ps(client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert "llama3.2:latest" in [model.model for model in listed.models]

    shown = await client.show("llama3.2")
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == 4096
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities is not None and "completion" in shown.capabilities

    assert (await client.ps()).models == []
    await client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], keep_alive=-1)
    (loaded,) = (await client.ps()).models
    assert loaded.model == "tiny:latest"
    assert loaded.context_length == 256
    assert loaded.expires_at is not None and loaded.expires_at.year >= 2300

    # keep_alive=0 is sent as 0.0 and must still unload.
    await client.generate(model="tiny", prompt="", keep_alive=0)
    assert (await client.ps()).models == []


async def test_errors_surface_as_response_errors(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as not_found:
        await client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.status_code == 404
    assert not_found.value.error == "model 'missing' not found"

    with pytest.raises(ollama.ResponseError) as show_missing:
        await client.show("missing")
    assert show_missing.value.status_code == 404


async def test_midstream_error_raises_while_iterating(
    client: ollama.AsyncClient, state: EmulatorState
) -> None:
    plan = {"mode": "midstream", "after_tokens": 1, "message": "runner died"}
    state.failures.add(FailurePlan.from_mapping(plan))
    received: list[str] = []

    async def consume() -> None:
        async for part in await client.generate(model="tiny", prompt="a b c", stream=True):
            received.append(part.response or "")

    with pytest.raises(ollama.ResponseError) as caught:
        await consume()
    assert received == ["Echo:"]
    assert caught.value.error == "runner died"
    assert caught.value.status_code == -1


async def test_running_emulator_and_control_client() -> None:
    async with running_emulator() as emulator, EmulatorControl(emulator.url) as control:
        api = ollama.AsyncClient(host=emulator.url)
        try:
            await control.hold()
            assert (await control.stats())["holding"] is True
            await control.release()
            await control.fail("404", model="tiny")
            with pytest.raises(ollama.ResponseError):
                await api.generate(model="tiny", prompt="x")
            answer = await api.generate(model="tiny", prompt="x")
            assert answer.response == "Echo: x"
            stats = await control.wait(completed=1, active="eq:0")
            assert stats["generations"] == 1
            assert [b["prompt"] for b in await control.requests("generate")] == ["x", "x"]
            await control.configure(token_delay_ms=1)
            assert emulator.state.config.token_delay_ms == 1
            with pytest.raises(TimeoutError):
                await control.wait(within_s=0.01, completed=5)
            assert (await control.reset())["generations"] == 0
        finally:
            await api.close()  # type: ignore[no-untyped-call]


async def test_pull(client: ollama.AsyncClient, state: EmulatorState) -> None:
    answer = await client.pull("llama3.2:1b")
    assert answer.status == "success"
    assert state.requests.bodies("pull") == [
        {"model": "llama3.2:1b", "insecure": False, "stream": False}
    ]
    parts = [part async for part in await client.pull("all-minilm", stream=True)]
    assert parts[0].status == "pulling manifest"
    assert parts[-1].status == "success"
    weights = [part for part in parts if part.total and part.total > 10_000_000]
    assert weights[-1].completed == weights[-1].total
    assert weights[-1].digest is not None and weights[-1].digest.startswith("sha256:")
    listed = [model.model for model in (await client.list()).models]
    # Newest first (to the second, as Ollama sorts them).
    assert set(listed[:2]) == {"all-minilm:latest", "llama3.2:1b"}
    embedded = await client.embed(model="all-minilm", input="pulled")
    assert len(embedded.embeddings[0]) == 384


async def test_pull_errors(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        await client.pull("no-such-model")
    assert (unknown.value.status_code, unknown.value.error) == (500, MANIFEST_NOT_FOUND)

    with pytest.raises(ollama.ResponseError) as midstream:
        async for _ in await client.pull("no-such-model", stream=True):
            pass
    assert (midstream.value.status_code, midstream.value.error) == (-1, MANIFEST_NOT_FOUND)

    with pytest.raises(ollama.ResponseError) as invalid:
        await client.pull("bad name")
    assert (invalid.value.status_code, invalid.value.error) == (400, "invalid model name")


async def test_copy_and_delete(client: ollama.AsyncClient) -> None:
    assert (await client.copy("tiny", "tiny-copy")).status == "success"
    assert "tiny-copy:latest" in [model.model for model in (await client.list()).models]
    assert (await client.delete("tiny-copy")).status == "success"
    assert "tiny-copy:latest" not in [model.model for model in (await client.list()).models]

    with pytest.raises(ollama.ResponseError) as missing:
        await client.delete("tiny-copy")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'tiny-copy' not found")
    with pytest.raises(ollama.ResponseError) as no_source:
        await client.copy("nope", "x")
    assert (no_source.value.status_code, no_source.value.error) == (404, 'model "nope" not found')
    with pytest.raises(ollama.ResponseError) as bad_destination:
        await client.copy("tiny", "bad name")
    assert bad_destination.value.error == 'destination "bad name" is invalid'


async def test_create(client: ollama.AsyncClient, state: EmulatorState) -> None:
    answer = await client.create(
        model="mario", from_="llama3.2", system="You are Mario.", parameters={"temperature": 0.5}
    )
    assert answer.status == "success"
    (sent,) = state.requests.bodies("create")
    assert sent["from"] == "llama3.2"
    shown = await client.show("mario")
    # The client's ShowResponse has no `system` field; the Modelfile carries it.
    assert shown.modelfile is not None and 'SYSTEM """You are Mario."""' in shown.modelfile
    assert shown.parameters is not None and "temperature                    0.5" in shown.parameters

    parts = [part async for part in await client.create(model="luigi", from_="mario", stream=True)]
    assert [part.status for part in parts[-2:]] == ["writing manifest", "success"]
    assert all((part.status or "").startswith("using existing layer") for part in parts[:-2])

    with pytest.raises(ollama.ResponseError) as neither:
        await client.create(model="nothing")
    assert (neither.value.status_code, neither.value.error) == (
        400,
        "neither 'from' or 'files' was specified",
    )


async def test_embed_and_legacy_embeddings(client: ollama.AsyncClient) -> None:
    answer = await client.embed(model="nomic-embed-text", input=["a b", "c"], dimensions=16)
    assert answer.model == "nomic-embed-text"
    assert [len(vector) for vector in answer.embeddings] == [16, 16]
    assert list(answer.embeddings[1]) == pytest.approx(normalized_embedding("c", 768, 16), abs=1e-7)
    assert answer.prompt_eval_count == 3

    legacy = await client.embeddings(model="nomic-embed-text", prompt="c")
    assert list(legacy.embedding) == raw_embedding("c", 768)

    with pytest.raises(ollama.ResponseError) as unknown:
        await client.embed(model="nope", input="x")
    assert unknown.value.status_code == 404
    assert unknown.value.error == 'model "nope" not found, try pulling it first'


async def test_control_client_waits_for_a_held_pull() -> None:
    async with running_emulator() as emulator, EmulatorControl(emulator.url) as control:
        api = ollama.AsyncClient(host=emulator.url)
        try:
            await control.hold()
            pull = asyncio.create_task(api.pull("llama3.2:1b"))
            stats = await control.wait_for_pull(held=True)
            assert (stats["pulling"], stats["pulls_held"]) == (1, 1)
            assert (await control.wait_for_pull())["pulling"] == 1
            await control.release()
            assert (await pull).status == "success"
            config = await control.configure(pull_step_ms=0, pull_steps=1)
            assert (config["pull_step_ms"], config["pull_steps"]) == (0, 1)
            assert (await control.config())["pull_steps"] == 1
            await control.reset()
            listed = [model.model for model in (await api.list()).models]
            assert "llama3.2:1b" not in listed
        finally:
            await api.close()  # type: ignore[no-untyped-call]


async def test_tools_thinking_and_structured_output(client: ollama.AsyncClient) -> None:
    def get_weather(city: str, days: int) -> str:
        """The weather in a city.

        Args:
            city: The city
            days: How many days ahead
        """
        return f"sunny in {city}"

    # The client turns the function into a tool schema; the emulator calls it.
    called = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "Paris"}], tools=[get_weather]
    )
    (call,) = called.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"city": "Paris", "days": 1}
    assert called.done_reason == "stop"

    thought = await client.chat(
        model="qwen3:0.6b", messages=[{"role": "user", "content": "why"}], think=True
    )
    assert thought.message.thinking == "Thinking about: why"
    assert thought.message.content == expected_reply("why")
    streamed = [
        part async for part in await client.generate(model="qwen3:0.6b", prompt="hm", stream=True)
    ]
    assert "".join(part.thinking or "" for part in streamed) == "Thinking about: hm"
    with pytest.raises(ollama.ResponseError) as refused:
        await client.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}], think=True)
    assert (refused.value.status_code, refused.value.error) == (
        400,
        '"llama3.2" does not support thinking',
    )

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    shaped = await client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "a b"}], format=schema
    )
    assert shaped.message.content == '{"n":3}'
    shown = await client.show("registry.ollama.ai/library/qwen3:0.6b")
    assert shown.capabilities == ["completion", "tools", "thinking"]


async def test_create_blob_create_from_files_and_push(
    client: ollama.AsyncClient, tmp_path: pathlib.Path
) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 4096)
    digest = await client.create_blob(gguf)
    assert digest.startswith("sha256:")
    created = await client.create(model="me/imported", files={"model.gguf": digest})
    assert created.status == "success"
    assert "me/imported:latest" in [model.model for model in (await client.list()).models]

    parts = [part async for part in await client.push("me/imported", stream=True)]
    assert parts[0].status == "retrieving manifest"
    assert [part.status for part in parts[-2:]] == ["pushing manifest", "success"]
    pushed = [part for part in parts if part.digest == digest]
    assert pushed[-1].completed == pushed[-1].total == gguf.stat().st_size

    with pytest.raises(ollama.ResponseError) as missing:
        await client.push("me/nothing")
    assert missing.value.status_code == 500
    assert missing.value.error.endswith("me/nothing/latest: no such file or directory")
