"""The OpenAI-compatible backend: Ollama requests translated to OpenAI's and the answers back
(pure), then the backend against the project's emulator serving only its `/v1` API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral_common.errors import CorralError, ErrorType
from corral_devstack.ports import free_port
from corral_emulator import EmulatorConfig, expected_reply, running_emulator
from corral_scheduler.backends.base import BackendStreamError, EmbedAnswer
from corral_scheduler.backends.openai_compat import (
    ChunkTranslator,
    OpenAIBackend,
    chat_request,
    completion_request,
    embed_answer,
    image_url,
)
from corral_scheduler.backends.response_format import (
    refuses_response_format,
    schema_in_json_object,
)
from corral_scheduler.retries import retry_reason

PNG = "iVBORw0KGgoAAAANSUhEUg"


def test_a_chat_becomes_a_chat_completion_with_its_sampling_parameters() -> None:
    body = chat_request(
        {
            "model": "llama3.2",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "what is this", "images": [PNG]},
            ],
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 40,
                "seed": 7,
                "num_predict": 12,
                "stop": ["\n\n"],
                "repeat_penalty": 1.1,
                "num_ctx": 8192,
            },
            "format": "json",
            "keep_alive": "5m",
        }
    )
    assert body["model"] == "llama3.2"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"]) == (0.2, 0.9, 40, 7)
    assert body["max_tokens"] == 12 and body["stop"] == ["\n\n"]
    # Not the same as frequency_penalty: sent under its own (llama.cpp) name only.
    assert body["repeat_penalty"] == 1.1 and "frequency_penalty" not in body
    # With a schema: llama.cpp's server takes a `json_object` without one as no constraint.
    assert body["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    # Load-time settings are the server's own.
    assert "num_ctx" not in body and "keep_alive" not in body and "options" not in body


def test_unlimited_num_predict_sends_no_max_tokens_and_a_schema_is_json_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = chat_request(
        {"model": "m", "messages": [], "options": {"num_predict": -1}, "format": schema}
    )
    assert "max_tokens" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }


# What llama-cpp-python 0.3.x's server answers to `response_format.type: "json_schema"`.
REFUSAL_TEXT = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}\n\n"
    '  File "/venv/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in '
    "create_chat_completion\n    POST /v1/chat/completions"
)
LLAMA_CPP_PYTHON_REFUSAL = {
    "error": {"message": REFUSAL_TEXT, "type": "internal_server_error", "param": None, "code": None}
}


def test_a_schema_in_the_llama_familys_shape() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = chat_request({"model": "m", "messages": [], "format": schema})
    other = schema_in_json_object(body)
    assert other is not None
    # What llama-cpp-python takes (and llama.cpp's server too); the rest is unchanged.
    assert other["response_format"] == {"type": "json_object", "schema": schema}
    assert {k: v for k, v in other.items() if k != "response_format"} == {
        k: v for k, v in body.items() if k != "response_format"
    }
    # Nothing to send differently without a schema.
    assert schema_in_json_object(chat_request({"model": "m", "messages": []})) is None
    assert (
        schema_in_json_object(chat_request({"model": "m", "messages": [], "format": "json"}))
        is None
    )


def test_only_a_refusal_naming_the_response_format_is_one() -> None:
    message = REFUSAL_TEXT
    assert refuses_response_format(CorralError(ErrorType.BACKEND_ERROR, message, status=500))
    older_llama_server = 'response_format type must be one of "text" or "json_object", but got: x'
    assert refuses_response_format(
        CorralError(ErrorType.BACKEND_ERROR, older_llama_server, status=400)
    )
    assert not refuses_response_format(CorralError(ErrorType.BACKEND_ERROR, "boom", status=500))
    # The lane retries these, whatever they say.
    assert not refuses_response_format(CorralError(ErrorType.BACKEND_ERROR, message, status=503))


def test_tool_calls_and_results_are_paired_and_tools_pass_as_they_are() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    body = chat_request(
        {
            "model": "m",
            "tools": tools,
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
                    ],
                },
                {"role": "tool", "content": "rain", "tool_name": "weather"},
            ],
        }
    )
    call = body["messages"][1]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert body["messages"][2]["tool_call_id"] == call["id"]
    assert body["tools"] == tools


def test_generate_is_a_chat_unless_raw() -> None:
    path, body = completion_request({"model": "m", "prompt": "hi", "system": "sys"})
    assert path == "/v1/chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
    ]
    path, body = completion_request({"model": "m", "prompt": "hi", "raw": True})
    assert path == "/v1/completions" and body["prompt"] == "hi"
    # Not the completions endpoint's default of 16 tokens: Ollama's generate runs until done.
    assert body["max_tokens"] is None
    _, body = completion_request(
        {"model": "m", "prompt": "hi", "raw": True, "options": {"num_predict": 5}}
    )
    assert body["max_tokens"] == 5


def test_image_types_are_told_by_their_bytes() -> None:
    assert image_url("/9j/4AAQ").startswith("data:image/jpeg;base64,")
    assert image_url("data:image/gif;base64,R0l") == "data:image/gif;base64,R0l"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


def delta(content: str | None = None, **more: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content, **more}}]}


def test_sse_chunks_become_ollama_chunks_with_usage_and_measured_durations() -> None:
    translator = ChunkTranslator("chat", "llama3.2", clock=Clock())
    chunks = translator.feed(delta("Echo:")) + translator.feed(delta(" hi"))
    assert [c["message"]["content"] for c in chunks] == ["Echo:", " hi"]
    assert all(c["done"] is False and c["model"] == "llama3.2" for c in chunks)
    translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    translator.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})
    final = translator.final()
    assert final["done"] is True and final["done_reason"] == "length"
    assert (final["prompt_eval_count"], final["eval_count"]) == (9, 2)
    # Measured by Corral: the server reported none.
    assert final["prompt_eval_duration"] > 0 and final["eval_duration"] > 0
    assert final["total_duration"] >= final["eval_duration"]


def test_llama_cpp_timings_are_used_when_sent_and_chunks_counted_without_usage() -> None:
    translator = ChunkTranslator("generate", "m", clock=Clock())
    assert translator.feed(delta("a"))[0]["response"] == "a"
    translator.feed(
        {"choices": [], "timings": {"prompt_ms": 2.5, "predicted_ms": 40.0, "prompt_n": 5}}
    )
    final = translator.final()
    assert final["prompt_eval_duration"] == 2_500_000 and final["eval_duration"] == 40_000_000
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 1
    assert final["done_reason"] == "stop" and final["response"] == ""


def test_tool_call_fragments_are_handed_over_in_one_chunk() -> None:
    translator = ChunkTranslator("chat", "m")
    first = {"index": 0, "id": "c", "function": {"name": "weather", "arguments": '{"ci'}}
    translator.feed(delta(None, tool_calls=[first]))
    translator.feed(delta(None, tool_calls=[{"index": 0, "function": {"arguments": 'ty":1}'}}]))
    chunk = translator.tool_call_chunk()
    assert chunk is not None
    assert chunk["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": 1}}}
    ]


def test_an_error_event_is_a_stream_error() -> None:
    with pytest.raises(BackendStreamError, match="boom"):
        ChunkTranslator("chat", "m").feed({"error": {"message": "boom"}})


def test_embeddings_come_back_in_both_ollama_shapes() -> None:
    answer = {
        "data": [{"index": 1, "embedding": [0.2]}, {"index": 0, "embedding": [0.1]}],
        "usage": {"prompt_tokens": 3},
    }
    embed = embed_answer("embed", "m", answer, 0, 10)
    assert "embeddings" in embed
    assert embed["embeddings"] == [[0.1], [0.2]] and embed["prompt_eval_count"] == 3
    assert embed_answer("embeddings", "m", answer, 0, 10) == {"embedding": [0.1]}


@pytest.fixture
async def backend() -> AsyncIterator[OpenAIBackend]:
    async with (
        running_emulator(EmulatorConfig(openai_only=True)) as emulator,
        aiohttp.ClientSession() as session,
    ):
        yield OpenAIBackend(
            session, f"{emulator.url}/v1", connect_timeout_s=2.0, read_timeout_s=30.0
        )


async def collect(backend: OpenAIBackend, kind: Any, payload: dict[str, Any]) -> list[Any]:
    async with backend.stream(kind, payload) as chunks:
        return [chunk async for chunk in chunks]


async def test_against_the_emulator_chat_generate_and_embed(backend: OpenAIBackend) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    chunks = await collect(backend, "chat", {"model": "llama3.2", "messages": messages})
    text = "".join(c["message"]["content"] for c in chunks)
    assert text == expected_reply("hello there")
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["eval_count"] == len(chunks) - 1 and final["prompt_eval_count"] > 0
    chunks = await collect(
        backend,
        "generate",
        {"model": "llama3.2", "prompt": "one two", "options": {"num_predict": 2}},
    )
    assert "".join(c["response"] for c in chunks) == expected_reply("one two", 2)
    assert chunks[-1]["done_reason"] == "length"
    embedded = await backend.embed("embed", {"model": "llama3.2", "input": ["a", "b"]})
    assert "embeddings" in embedded
    assert len(embedded["embeddings"]) == 2 and embedded["prompt_eval_count"] > 0
    nothing: EmbedAnswer = {"model": "llama3.2", "embeddings": []}
    assert await backend.embed("embed", {"model": "llama3.2", "input": []}) == nothing


async def test_against_the_emulator_models_loads_and_refusals(backend: OpenAIBackend) -> None:
    names = [m["name"] for m in await backend.list_models()]
    assert "llama3.2:latest" in names
    assert [m["name"] for m in await backend.running()] == names
    assert (await backend.show("llama3.2"))["capabilities"] == ["completion"]
    assert await backend.version() == "0.0.0"
    with pytest.raises(CorralError) as missing:
        await backend.show("nope")
    assert missing.value.status == 404
    assert (await backend.load({"model": "llama3.2"}))["done_reason"] == "load"
    loads = await collect(backend, "chat", {"model": "llama3.2", "messages": []})
    assert [c["done_reason"] for c in loads] == ["load"]
    unloads = await collect(
        backend, "generate", {"model": "llama3.2", "prompt": "", "keep_alive": 0}
    )
    assert [c["done_reason"] for c in unloads] == ["unload"]
    with pytest.raises(CorralError) as refused:
        await collect(backend, "chat", {"model": "nope", "messages": [{"role": "user"}]})
    assert refused.value.status == 404 and "nope" in refused.value.message


async def test_a_server_that_is_not_there_is_named_by_its_kind() -> None:
    async with aiohttp.ClientSession() as session:
        backend = OpenAIBackend(
            session, f"http://127.0.0.1:{free_port()}", connect_timeout_s=2.0, read_timeout_s=5.0
        )
        with pytest.raises(CorralError) as down:
            await collect(backend, "chat", {"model": "m", "messages": [{"role": "user"}]})
    assert down.value.status == 503
    assert down.value.message.startswith("Cannot connect to OpenAI-compatible server.")
    assert retry_reason(down.value) == "refused"


class LlamaCppPythonLike:
    """A server that takes schemas as llama-cpp-python 0.3.x does (`json_object` with a
    `schema`, `json_schema` refused with its 500), answering `{"a":1}`."""

    def __init__(self) -> None:
        self.formats: list[Any] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.formats.append(body.get("response_format"))
        format_ = body.get("response_format") or {}
        if format_.get("type") not in (None, "text", "json_object"):
            return web.json_response(LLAMA_CPP_PYTHON_REFUSAL, status=500)
        if body["messages"][0]["content"] == "fail":
            return web.json_response({"error": {"message": "out of memory"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ('{"a"', ":1}"):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


async def test_a_schema_the_server_refuses_is_sent_again_as_it_takes_one() -> None:
    server = LlamaCppPythonLike()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    in_openais_shape = {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    in_its_shape = {"type": "json_object", "schema": schema}

    def ask(content: str = "give a") -> dict[str, Any]:
        messages = [{"role": "user", "content": content}]
        return {"model": "m", "messages": messages, "format": schema}

    async with TestServer(server.app) as running, aiohttp.ClientSession() as session:
        backend = OpenAIBackend(
            session, str(running.make_url("")), connect_timeout_s=2.0, read_timeout_s=5.0
        )
        chunks = await collect(backend, "chat", ask())
        assert "".join(c["message"]["content"] for c in chunks) == '{"a":1}'
        assert chunks[-1]["done"] is True
        assert server.formats == [in_openais_shape, in_its_shape]
        # Remembered: the next schema goes in its shape at once.
        await collect(backend, "chat", ask())
        assert server.formats[2:] == [in_its_shape]
        # Its other refusals pass through as they are, status and text.
        with pytest.raises(CorralError) as refused:
            await collect(backend, "chat", ask("fail"))
        assert (refused.value.status, refused.value.message) == (500, "out of memory")
        assert server.formats[3:] == [in_its_shape]
