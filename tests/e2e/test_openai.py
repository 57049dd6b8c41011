"""The `openai` SDK, pointed at Corral's `/v1` instead of Ollama's, keeps working: chat (sync,
async, streaming), tools, reasoning, JSON output, completions, embeddings, models and errors; and
the raw SSE stream carries queue feedback as comments only."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

import aiohttp
import openai
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply, tokenize

pytestmark = pytest.mark.e2e

QUESTION = "Why is the sky blue?"
HELLO: list[Any] = [{"role": "user", "content": QUESTION}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "The city"}},
        },
    },
}


def error_text(error: openai.APIStatusError) -> str:
    """The error object's own message (the SDK's `message` prefixes the status)."""
    body = error.body
    assert isinstance(body, dict)
    return str(body["message"])


def sync_client(cluster: Cluster, **kwargs: Any) -> openai.OpenAI:
    # No retries: a test must see the first answer, not a retried one.
    return openai.OpenAI(
        base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, **kwargs
    )


def async_client(cluster: Cluster, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{cluster.gateway_url}/v1", api_key="unused", max_retries=0, **kwargs
    )


def test_sync_chat(cluster: Cluster, emu: EmulatorControl) -> None:
    with sync_client(cluster) as client:
        raw = client.chat.completions.with_raw_response.create(model="llama3.2", messages=HELLO)
    completion = raw.parse()
    reply = expected_reply(QUESTION)
    assert completion.choices[0].message.content == reply
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.system_fingerprint == "fp_ollama"
    assert completion.model == "llama3.2"
    request_id = raw.headers["X-Request-Id"]
    assert completion.id == f"chatcmpl-{request_id}"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(tokenize(reply))
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert raw.headers["Content-Type"].startswith("application/json")
    # Corral's additions ride as extra fields.
    assert (completion.model_extra or {})["request_id"] == request_id


async def test_async_streaming_chat_with_usage(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        stream = await client.chat.completions.create(
            model="llama3.2",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c for c in chunks if c.choices]
    assert deltas[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in deltas[1:])
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == expected_reply(QUESTION)
    assert [c.choices[0].finish_reason for c in deltas].count("stop") == 1
    assert deltas[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(tokenize(expected_reply(QUESTION)))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_max_tokens_ends_with_length(cluster: Cluster, emu: EmulatorControl) -> None:
    prompt = "one two three four five"
    with sync_client(cluster) as client:
        completion = client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=3,
            temperature=0,
            seed=7,
        )
        newer = client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": prompt}],
            max_completion_tokens=2,
        )
    assert completion.choices[0].message.content == expected_reply(prompt, 3)
    assert completion.choices[0].finish_reason == "length"
    assert newer.choices[0].message.content == expected_reply(prompt, 2)


async def test_tool_call_round_trip(cluster: Cluster, emu: EmulatorControl) -> None:
    question: Any = {"role": "user", "content": "What's the weather in Paris?"}
    async with async_client(cluster) as client:
        first = await client.chat.completions.create(
            model="llama3.2", messages=[question], tools=[WEATHER_TOOL]
        )
        message = first.choices[0].message
        assert first.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None and len(message.tool_calls) == 1
        call = message.tool_calls[0]
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments), dict)
        # The client answers the call; the model then answers in words.
        second = await client.chat.completions.create(
            model="llama3.2",
            messages=[
                question,
                message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
            ],
            tools=[WEATHER_TOOL],
        )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


async def test_streamed_tool_call_deltas(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        stream = await client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0 and calls[0].id and calls[0].id.startswith("call")
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices[0].delta.content is None


async def test_reasoning_effort_maps_to_think(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        thinking = await client.chat.completions.create(
            model="qwen3:0.6b", messages=HELLO, reasoning_effort="high"
        )
        quiet = await client.chat.completions.create(
            model="qwen3:0.6b", messages=HELLO, reasoning_effort="none"
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="qwen3:0.6b",
                messages=HELLO,
                extra_body={"reasoning_effort": "extreme"},
            )
    assert (thinking.choices[0].message.model_extra or {}).get("reasoning")
    assert thinking.choices[0].message.content == expected_reply(QUESTION)
    assert "reasoning" not in (quiet.choices[0].message.model_extra or {})
    assert error_text(refused.value).startswith('invalid reasoning value: "extreme"')


async def test_streamed_reasoning_comes_before_content(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    async with async_client(cluster) as client:
        stream = await client.chat.completions.create(
            model="qwen3:0.6b", messages=HELLO, stream=True
        )
        deltas = [c.choices[0].delta async for c in stream if c.choices]
    kinds = [
        "reasoning" if (d.model_extra or {}).get("reasoning") else "content"
        for d in deltas
        if d.content or (d.model_extra or {}).get("reasoning")
    ]
    assert kinds[0] == "reasoning" and "content" in kinds
    assert kinds == sorted(kinds, key=lambda kind: kind == "content")


async def test_json_output(cluster: Cluster, emu: EmulatorControl) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["city", "celsius"],
        "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    }
    async with async_client(cluster) as client:
        as_json = await client.chat.completions.create(
            model="llama3.2", messages=HELLO, response_format={"type": "json_object"}
        )
        as_schema = await client.chat.completions.create(
            model="llama3.2",
            messages=HELLO,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": schema},
            },
        )
    assert isinstance(json.loads(as_json.choices[0].message.content or ""), dict)
    instance = json.loads(as_schema.choices[0].message.content or "")
    assert set(instance) >= {"city", "celsius"}


async def test_images_in_content_parts(cluster: Cluster, emu: EmulatorControl) -> None:
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk"
        "+A8AAQUBAScY42YAAAAASUVORK5CYII="
    )
    parts: Any = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    remote: Any = [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]
    async with async_client(cluster) as client:
        completion = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": parts}]
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": remote}]
            )
    assert completion.choices[0].finish_reason == "stop"
    assert error_text(refused.value).startswith("image URLs are not currently supported")


def test_completions(cluster: Cluster, emu: EmulatorControl) -> None:
    prompt = "Tell me a story"
    with sync_client(cluster) as client:
        whole = client.completions.create(model="llama3.2", prompt=prompt)
        chunks = list(
            client.completions.create(
                model="llama3.2",
                prompt=prompt,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == expected_reply(prompt)
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected_reply(prompt)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_embeddings(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        # The SDK asks for base64 unless told otherwise, and decodes it itself.
        default = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        floats = await client.embeddings.create(
            model="nomic-embed-text", input=["a", "b"], encoding_format="float"
        )
        single = await client.embeddings.create(model="nomic-embed-text", input="a")
        short = await client.embeddings.create(
            model="nomic-embed-text", input="a", dimensions=8, encoding_format="float"
        )
        with pytest.raises(openai.BadRequestError) as empty:
            await client.embeddings.create(model="nomic-embed-text", input=[])
    assert default.object == "list" and [d.index for d in default.data] == [0, 1]
    for got, want in zip(default.data, floats.data, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-6)
    assert single.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert len(short.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    assert error_text(empty.value) == "invalid input"


async def test_base64_embeddings_are_little_endian_float32(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    body = {"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{cluster.gateway_url}/v1/embeddings", json=body) as response:
            encoded = (await response.json())["data"][0]["embedding"]
        body["encoding_format"] = "float"
        async with session.post(f"{cluster.gateway_url}/v1/embeddings", json=body) as response:
            vector = (await response.json())["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vector, abs=1e-6)


async def test_models(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        listed = [model async for model in client.models.list()]
        one = await client.models.retrieve("llama3.2")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such-model")
    ids = {model.id for model in listed}
    assert any(name.startswith("llama3.2") for name in ids)
    assert all(m.object == "model" and m.owned_by == "library" and m.created for m in listed)
    assert (one.id, one.object, one.owned_by) == ("llama3.2", "model", "library")
    assert missing.value.code == "model_not_found"


async def test_errors_in_openais_shape(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="no-such-model", messages=HELLO)
        with pytest.raises(openai.BadRequestError) as empty:
            await client.chat.completions.create(model="llama3.2", messages=[])
        with pytest.raises(openai.BadRequestError) as typed:
            await client.chat.completions.create(
                model="llama3.2", messages=HELLO, extra_body={"stream": "yes"}
            )
    assert unknown.value.code == "model_not_found"
    assert unknown.value.type == "not_found_error"
    assert error_text(unknown.value) == "model 'no-such-model' not found"
    assert error_text(empty.value) == "[] is too short - 'messages'"
    assert empty.value.type == "invalid_request_error"
    assert error_text(typed.value) == (
        "json: cannot unmarshal string into Go struct field "
        "ChatCompletionRequest.stream of type bool"
    )


async def test_backend_failure_mid_stream_raises_in_the_sdk(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.fail("midstream", after_tokens=2, message="out of memory")
    seen: list[str] = []
    async with async_client(cluster) as client:
        stream = await client.chat.completions.create(model="llama3.2", messages=HELLO, stream=True)

        async def consume() -> None:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIError) as failed:
            await consume()
    assert failed.value.message == "out of memory"
    assert "".join(seen) == "".join(tokenize(expected_reply(QUESTION))[:2])


async def test_sessions_from_header_and_user(cluster: Cluster, emu: EmulatorControl) -> None:
    async with async_client(cluster, default_headers={"X-Session-Id": "oai-header"}) as client:
        await client.chat.completions.create(model="llama3.2", messages=HELLO)
        second = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "And at night?"}]
        )
    extra = second.model_extra or {}
    assert extra["session_id"] == "oai-header"
    # The first turn (question and answer) came back from the store around the new message.
    assert extra["context_info"]["messages_used"] == 3
    async with async_client(cluster) as client:
        # OpenAI's `user` names no session unless CORRAL_OPENAI_USER_SESSIONS is on: clients
        # send it along with whole histories, which a session would then hold twice.
        first = await client.chat.completions.create(
            model="llama3.2", messages=HELLO, user="oai-user"
        )
        again = await client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "And at night?"}],
            metadata={"session_id": "oai-user"},
        )
    assert "session_id" not in (first.model_extra or {})
    assert (again.model_extra or {})["context_info"]["messages_used"] == 1


async def sse_frames(response: aiohttp.ClientResponse) -> list[str]:
    return [f for f in (await response.content.read()).decode().split("\n\n") if f]


async def test_a_stream_that_never_waited_has_no_queue_comment(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    """Started at once: no `: queue position=0` comment, only the answer's events."""
    body = {"model": "llama3.2", "messages": HELLO, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{cluster.gateway_url}/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Queue-Position"] == "0"
        frames = await sse_frames(response)
    assert all(f.startswith("data: ") for f in frames), frames
    assert frames[-1] == "data: [DONE]"
    reasons = [
        json.loads(f.removeprefix("data: "))["choices"][0]["finish_reason"] for f in frames[:-1]
    ]
    assert reasons[-1] == "stop" and set(reasons[:-1]) == {None}


async def test_heartbeats_are_comments_until_the_first_token(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    """A request the backend is working on (held before its first token, as in a long prompt
    evaluation) and one waiting with queue feedback off both get `: heartbeat` comment lines
    every CORRAL_HEARTBEAT_S (1 s here), never a data frame, until their answers come."""
    url = f"{cluster.gateway_url}/v1/chat/completions"
    body = {"model": "llama3.2", "messages": HELLO, "stream": True}
    await emu.hold()
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as running:
        # The headers come with the first heartbeat, before any token.
        assert await running.content.readline() == b": heartbeat\n"
        assert await running.content.readline() == b"\n"
        quiet_body = {**body, "messages": [{"role": "user", "content": "quiet"}]}
        async with session.post(url, json=quiet_body, headers={"X-Queue-Progress": "0"}) as quiet:
            assert await quiet.content.readline() == b": heartbeat\n"
            assert await quiet.content.readline() == b"\n"
            await emu.release()
            running_frames = await sse_frames(running)
            quiet_frames = await sse_frames(quiet)
    for frames, question in ((running_frames, QUESTION), (quiet_frames, "quiet")):
        comments = [f for f in frames if f.startswith(":")]
        assert set(comments) <= {": heartbeat"}, comments
        data = [f.removeprefix("data: ") for f in frames if not f.startswith(":")]
        assert data[-1] == "[DONE]"
        chunks = [json.loads(d) for d in data[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == expected_reply(question)
        # No comment after the first token.
        first_data = frames.index(next(f for f in frames if f.startswith("data: ")))
        assert not any(f.startswith(":") for f in frames[first_data:])


async def test_a_request_id_in_flight_is_a_conflict_in_the_sdk(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.hold()
    headers = {"X-Request-Id": "sdk-reused"}
    async with async_client(cluster, default_headers=headers) as client:
        first = asyncio.create_task(
            client.chat.completions.create(model="llama3.2", messages=HELLO)
        )
        await emu.wait(held=1)
        try:
            with pytest.raises(openai.ConflictError) as conflict:
                await client.chat.completions.create(model="llama3.2", messages=HELLO)
        finally:
            await emu.release()
        assert (await first).choices[0].message.content == expected_reply(QUESTION)
    assert conflict.value.status_code == 409
    assert conflict.value.code == "request_in_flight"
    assert error_text(conflict.value) == (
        "request id 'sdk-reused' is already in flight; use a new X-Request-Id"
    )


async def test_queue_feedback_is_sse_comments(cluster: Cluster, emu: EmulatorControl) -> None:
    """A request waiting behind another sees `: queue ...` comments, never a chunk with
    finish_reason before its answer, and the SSE parser sees only the answer's events."""
    await emu.hold()
    async with aiohttp.ClientSession() as session, async_client(cluster) as client:
        first = asyncio.create_task(
            client.chat.completions.create(model="llama3.2", messages=HELLO)
        )
        await emu.wait(held=1)
        body = {"model": "llama3.2", "messages": HELLO, "stream": True}
        async with session.post(
            f"{cluster.gateway_url}/v1/chat/completions", json=body
        ) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["X-Queue-Position"] == "1"
            first_line = await response.content.readline()
            assert first_line.startswith(b": queue position=1 estimated_wait_ms=")
            await emu.release()
            rest = await response.content.read()
        await first
    frames = [f for f in (first_line + rest).decode().split("\n\n") if f]
    data = [f.removeprefix("data: ") for f in frames if f.startswith("data: ")]
    comments = [f for f in frames if f.startswith(":")]
    assert comments and all(c.startswith(": queue position=") for c in comments)
    assert all(f.startswith((":", "data: ")) for f in frames)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert reasons[:-1] == [None] * (len(reasons) - 1) and reasons[-1] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected_reply(QUESTION)
