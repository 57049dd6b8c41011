"""The official `ollama` Python client, pointed at Corral instead of Ollama, keeps working."""

from __future__ import annotations

import aiohttp
import ollama
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply, tokenize
from tests.fixtures import Emulator

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Why is the sky blue?"}]


async def test_chat(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    response = await client.chat(model="llama3.2", messages=HELLO)
    assert response.message.role == "assistant"
    assert response.message.content == expected_reply("Why is the sky blue?")
    assert response.done is True
    assert response.done_reason == "stop"
    assert response.eval_count == len(expected_reply("Why is the sky blue?").split())
    assert response.total_duration
    assert response.total_duration > 0


async def test_chat_stream(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    chunks = [c async for c in await client.chat(model="llama3.2", messages=HELLO, stream=True)]
    text = "".join(c.message.content or "" for c in chunks)
    assert text == expected_reply("Why is the sky blue?")
    assert chunks[-1].done is True
    assert chunks[-1].done_reason == "stop"
    assert all(not c.done for c in chunks[:-1])


async def test_generate(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    response = await client.generate(model="llama3.2", prompt="Tell me a story")
    assert response.response == expected_reply("Tell me a story")
    assert response.done is True
    assert response.context  # generate keeps Ollama's (deprecated) context array


async def test_generate_stream_with_num_predict(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    stream = await client.generate(
        model="llama3.2", prompt="one two three four five", stream=True, options={"num_predict": 3}
    )
    chunks = [c async for c in stream]
    assert all(c.response is not None for c in chunks)
    assert "".join(c.response or "" for c in chunks) == expected_reply("one two three four five", 3)
    assert chunks[-1].done_reason == "length"


def test_sync_client(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.Client(host=cluster.gateway_url)
    response = client.chat(model="llama3.2", messages=HELLO, options={"temperature": 0})
    assert response.message.content == expected_reply("Why is the sky blue?")


async def test_unknown_model_is_a_404_response_error(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="no-such-model", messages=HELLO)
    assert info.value.status_code == 404
    assert info.value.error == "model 'no-such-model' not found"

    async def consume() -> None:
        async for _ in await client.generate(model="no-such-model", prompt="x", stream=True):
            pass

    with pytest.raises(ollama.ResponseError) as streamed:
        await consume()
    assert streamed.value.status_code == 404


async def test_backend_error_keeps_its_status(cluster: Cluster, emu: EmulatorControl) -> None:
    await emu.fail("500", message="model runner crashed")
    client = ollama.AsyncClient(host=cluster.gateway_url)
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="llama3.2", messages=HELLO)
    assert info.value.status_code == 500
    assert info.value.error == "model runner crashed"


async def test_error_mid_stream_is_a_final_error_line(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.fail("midstream", after_tokens=2, message="out of memory")
    client = ollama.AsyncClient(host=cluster.gateway_url)
    seen: list[str] = []

    async def consume() -> None:
        async for chunk in await client.chat(model="llama3.2", messages=HELLO, stream=True):
            seen.append(chunk.message.content or "")

    with pytest.raises(ollama.ResponseError) as info:
        await consume()
    assert info.value.error == "out of memory"
    assert info.value.status_code == -1  # how the client reports an error line mid-stream
    # The tokens sent before the failure reached the client, and nothing after them.
    assert "".join(seen) == "".join(tokenize(expected_reply("Why is the sky blue?"))[:2])


async def test_session_header_and_option_reach_corral_not_the_backend(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    # The client's pydantic models drop fields they do not know (session_id, queue_info), so
    # what this shows is that both ways of passing a session id are accepted and stripped.
    client = ollama.AsyncClient(host=cluster.gateway_url, headers={"X-Session-Id": "s-header"})
    await client.chat(model="llama3.2", messages=HELLO)
    await ollama.AsyncClient(host=cluster.gateway_url).chat(
        model="llama3.2", messages=HELLO, options={"session_id": "s-opt", "temperature": 0.5}
    )
    sent = await emu.requests("chat")
    assert sent[-1]["options"] == {"temperature": 0.5}
    assert all("session_id" not in body for body in sent)


async def test_load_and_unload_with_the_official_client(
    cluster: Cluster, emu: EmulatorControl, emulator: Emulator
) -> None:
    """`generate(model=m)` / `chat(model=m, keep_alive=0)` load and unload, as with Ollama; a
    streaming call gets the same one object, which the client reads as a one-chunk stream."""
    client = ollama.AsyncClient(host=cluster.gateway_url)
    backend = ollama.AsyncClient(host=emulator.url)

    async def resident() -> list[str | None]:
        return [m.model for m in (await backend.ps()).models]

    loaded = await client.generate(model="tiny")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")
    assert "tiny:latest" in await resident()
    unloaded = await client.chat(model="tiny", keep_alive=0)
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    assert unloaded.message.role == "assistant"
    assert not unloaded.message.content
    assert "tiny:latest" not in await resident()
    chunks = [c async for c in await client.chat(model="tiny", stream=True)]
    assert [(c.done, c.done_reason) for c in chunks] == [(True, "load")]
    assert "tiny:latest" in await resident()
    generated = [c async for c in await client.generate(model="tiny", keep_alive=0, stream=True)]
    assert [(c.done, c.done_reason) for c in generated] == [(True, "unload")]
    assert "tiny:latest" not in await resident()


async def test_list_show_and_ps(cluster: Cluster, emu: EmulatorControl) -> None:
    client = ollama.AsyncClient(host=cluster.gateway_url)
    listed = await client.list()
    names = {m.model for m in listed.models}
    assert {"llama3.2:latest", "tiny:latest"} <= names
    shown = await client.show("tiny")
    assert shown.modelinfo is not None
    assert shown.modelinfo["llama.context_length"] == 256
    await client.chat(model="llama3.2", messages=HELLO)
    running = await client.ps()
    assert [m.model for m in running.models] == ["llama3.2:latest"]
    with pytest.raises(ollama.ResponseError) as info:
        await client.show("no-such-model")
    assert info.value.status_code == 404
    assert info.value.error == "model 'no-such-model' not found"


async def test_show_accepts_the_older_name_field(cluster: Cluster, emu: EmulatorControl) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{cluster.gateway_url}/api/show"
        async with session.post(url, json={"name": "tiny"}) as response:
            assert response.status == 200
            assert "model_info" in await response.json()
        async with session.post(url, json={}) as response:
            assert (response.status, await response.json()) == (400, {"error": "model is required"})
        async with session.post(url, data=b"") as response:
            assert response.status == 400
        async with session.head(f"{cluster.gateway_url}/api/tags") as response:
            assert response.status == 200
