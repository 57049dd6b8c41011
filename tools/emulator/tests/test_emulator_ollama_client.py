"""The official `ollama` Python client against the emulator on a real port."""

from __future__ import annotations

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
    reply_tokens,
    running_emulator,
)
from corral_emulator.failures import FailurePlan


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
