"""Native answers and stream chunks as OpenAI objects.

Golden cases come from Ollama's own tests (ollama/ollama `openai/openai_test.go`: ToChatCompletion,
ToStreamChunks, FinishChunk, ToToolCalls, ToListCompletion; `middleware/openai_test.go`:
TestChatWriter_*, TestListMiddleware, TestRetrieveMiddleware). Every object is also validated
with the `openai` SDK's own types.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from corral_gateway.openai.responses import (
    SYSTEM_FINGERPRINT,
    ChatStream,
    CompletionStream,
    chat_completion,
    completion_id,
    embedding_list,
    finish_reason,
    floats_to_base64,
    model_list,
    model_retrieved,
    owner,
    to_tool_calls,
    unix_time,
    usage,
)

T0 = "2023-11-14T22:13:20Z"  # 1700000000
T10 = "2023-11-14T22:13:30.123456789Z"
T20 = "2023-11-14T22:13:40Z"


def native_call(call_id: str, index: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "function": {"index": index, "name": name, "arguments": arguments}}


def chunk(
    content: str = "",
    *,
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done: bool = False,
    done_reason: str | None = None,
    created_at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    native: dict[str, Any] = {"model": "test-model", "message": message, "done": done, **extra}
    if created_at is not None:
        native["created_at"] = created_at
    if done_reason is not None:
        native["done_reason"] = done_reason
    return native


def stream(include_usage: bool = False) -> ChatStream:
    return ChatStream(
        completion_id="chatcmpl-test", model="test-model", include_usage=include_usage
    )


def run(
    chat_stream: ChatStream, *natives: dict[str, Any], sdk_valid: bool = True
) -> list[dict[str, Any]]:
    """The chunks for `natives`, checked against the SDK's types. `sdk_valid=False` where Ollama's
    own output is outside them (a `finish_reason` such as `unload`, native logprobs without
    `bytes`): the SDK builds its objects without validation, so clients still read those."""
    out: list[dict[str, Any]] = []
    for native in natives:
        out.extend(chat_stream.feed(native))
    if sdk_valid:
        for item in out:
            ChatCompletionChunk.model_validate(item)
    return out


def delta(item: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = item["choices"][0]["delta"]
    return result


def reason(item: dict[str, Any]) -> Any:
    return item["choices"][0]["finish_reason"]


# --- small pieces ------------------------------------------------------------------------------


def test_usage() -> None:
    assert usage({"prompt_eval_count": 10, "eval_count": 20}) == {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
    }
    assert usage({}) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_to_tool_calls_preserves_ids_and_indexes() -> None:
    native = [
        native_call("call_abc123", 2, "get_weather", location="Seattle"),
        native_call("call_def456", 7, "get_time", timezone="UTC"),
    ]
    before = [dict(call) for call in native]
    assert to_tool_calls(native) == [
        {
            "id": "call_abc123",
            "index": 2,
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Seattle"}'},
        },
        {
            "id": "call_def456",
            "index": 7,
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"timezone":"UTC"}'},
        },
    ]
    assert native == before  # the input is not mutated


def test_tool_call_without_id_gets_one() -> None:
    (call,) = to_tool_calls([{"function": {"name": "f", "arguments": {}}}])
    assert call["id"].startswith("call_") and len(call["id"]) > len("call_")
    assert (call["index"], call["function"]["arguments"]) == (0, "{}")


@pytest.mark.parametrize(
    ("done_reason", "tool_calls", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        ("unload", False, "unload"),
        ("unload", True, "unload"),
        ("", False, None),
        (None, False, None),
    ],
)
def test_finish_reason(done_reason: str | None, tool_calls: bool, expected: str | None) -> None:
    assert finish_reason(done_reason, tool_calls) == expected


def test_unix_time() -> None:
    assert unix_time(T0) == 1700000000
    assert unix_time(T10) == 1700000010  # nanoseconds, as Ollama writes them
    assert unix_time("2023-11-14T14:13:20.5-08:00") == 1700000000
    now = int(time.time())
    assert unix_time(None) >= now
    assert unix_time("garbage") >= now


def test_completion_ids() -> None:
    assert completion_id("chatcmpl", "abc") == "chatcmpl-abc"
    assert completion_id("cmpl").startswith("cmpl-")


# --- ToChatCompletion --------------------------------------------------------------------------


def test_chat_completion() -> None:
    answer = chunk(
        "Hello there",
        done=True,
        done_reason="stop",
        created_at="2009-02-13T23:31:30Z",
        prompt_eval_count=5,
        eval_count=2,
    )
    result = chat_completion(answer, completion_id="test-id")
    assert result == {
        "id": "test-id",
        "object": "chat.completion",
        "created": 1234567890,
        "model": "test-model",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    ChatCompletion.model_validate(result)


def test_chat_completion_with_logprobs() -> None:
    logprobs = [
        {"token": "Hello", "logprob": -0.5, "top_logprobs": [{"token": "Hello", "logprob": -0.5}]},
        {"token": " there", "logprob": -0.3},
    ]
    result = chat_completion(chunk("Hello there", done=True, logprobs=logprobs), completion_id="x")
    assert result["choices"][0]["logprobs"] == {"content": logprobs}
    assert (
        "logprobs" not in chat_completion(chunk("Hi", done=True), completion_id="x")["choices"][0]
    )


def test_chat_completion_finish_reason_precedence() -> None:
    calls = [native_call("call_123", 0, "get_weather", location="Seattle")]
    for done_reason, expected in (
        ("length", "length"),
        ("stop", "tool_calls"),
        ("unload", "unload"),
    ):
        answer = chunk(tool_calls=calls, done=True, done_reason=done_reason)
        assert reason(chat_completion(answer, completion_id="x")) == expected


def test_chat_completion_reasoning_and_tool_calls() -> None:
    calls = [native_call("call_1", 0, "f", a=1)]
    answer = chunk("", thinking="hmm", tool_calls=calls, done=True, done_reason="stop")
    result = chat_completion(answer, completion_id="x", extras={"request_id": "r"})
    message = result["choices"][0]["message"]
    assert message["reasoning"] == "hmm"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert result["request_id"] == "r"
    parsed = ChatCompletion.model_validate(result)
    assert parsed.model_extra == {"request_id": "r"}
    assert parsed.choices[0].message.tool_calls is not None


def test_chat_completion_without_done_reason_has_null_finish_reason() -> None:
    assert reason(chat_completion(chunk("x", done=True), completion_id="x")) is None


# --- ToStreamChunks, FinishChunk ---------------------------------------------------------------


def test_stream_splits_thinking_and_content() -> None:
    out = run(stream(), chunk("final answer", thinking="step-by-step"))
    assert [delta(item) for item in out] == [
        {"role": "assistant", "reasoning": "step-by-step"},
        {"content": "final answer"},
    ]
    assert [reason(item) for item in out] == [None, None]


def test_stream_splits_thinking_and_tool_calls() -> None:
    calls = [native_call("call_123", 0, "get_weather", location="Seattle")]
    out = run(stream(), chunk(thinking="need a tool", tool_calls=calls))
    assert delta(out[0]) == {"role": "assistant", "reasoning": "need a tool"}
    assert delta(out[1])["tool_calls"][0]["id"] == "call_123"
    assert "reasoning" not in delta(out[1])
    assert len(out) == 2


@pytest.mark.parametrize(
    "native",
    [
        chunk(thinking="pondering"),
        chunk("hello"),
        chunk(tool_calls=[native_call("call_456", 0, "get_time", timezone="UTC")]),
    ],
    ids=["thinking-only", "content-only", "toolcalls-only"],
)
def test_stream_single_chunk_for_non_mixed(native: dict[str, Any]) -> None:
    assert len(run(stream(), native)) == 1


def test_stream_split_sends_logprobs_only_on_the_first_half() -> None:
    logprobs = [{"token": "tok", "logprob": -0.25}]
    out = run(stream(), chunk("content", thinking="thinking", logprobs=logprobs), sdk_valid=False)
    assert out[0]["choices"][0]["logprobs"] == {"content": logprobs}
    assert "logprobs" not in out[1]["choices"][0]


def test_finish_chunk_json_delta_is_empty() -> None:
    out = run(stream(), chunk("Hi"), chunk(done=True, done_reason="stop"))
    assert delta(out[-1]) == {}
    assert reason(out[-1]) == "stop"


@pytest.mark.parametrize(
    ("done_reason", "tool_call", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("length", True, "length"),
        (None, False, "stop"),  # an empty reason defaults to stop
        ("unload", False, "unload"),
        ("unload", True, "unload"),
    ],
)
def test_finish_chunk_reason(done_reason: str | None, tool_call: bool, expected: str) -> None:
    first = chunk(tool_calls=[native_call("c", 0, "f")]) if tool_call else chunk("x")
    out = run(stream(), first, chunk(done=True, done_reason=done_reason), sdk_valid=False)
    assert reason(out[-1]) == expected
    assert delta(out[-1]) == {}


# --- TestChatWriter_* --------------------------------------------------------------------------


def test_writer_mixed_thinking_and_content_with_usage() -> None:
    final = chunk(
        "final answer",
        thinking="reasoning",
        done=True,
        done_reason="stop",
        prompt_eval_count=3,
        eval_count=2,
    )
    out = run(stream(include_usage=True), final)
    # 2 content chunks + finish + usage (the caller adds [DONE])
    assert len(out) == 4
    assert delta(out[0]) == {"role": "assistant", "reasoning": "reasoning"}
    assert delta(out[1]) == {"content": "final answer"}
    assert (delta(out[2]), reason(out[2])) == ({}, "stop")
    assert out[3]["choices"] == []
    assert out[3]["usage"]["total_tokens"] == 5
    assert "usage" not in out[2]


def test_writer_single_chunk_path() -> None:
    out = run(stream(), chunk("single chunk", done=True, done_reason="stop"))
    assert len(out) == 2
    assert (delta(out[0])["content"], reason(out[0])) == ("single chunk", None)
    assert reason(out[1]) == "stop"


def test_writer_mixed_without_done_emits_chunks_only() -> None:
    chat_stream = stream(include_usage=True)
    calls = [native_call("call_234", 0, "get_weather", location="Portland")]
    out = run(chat_stream, chunk(thinking="reasoning", tool_calls=calls))
    assert len(out) == 2
    assert reason(out[1]) is None
    assert chat_stream.tool_calls_sent == 1
    assert not chat_stream.finished


def test_writer_role_only_on_first_chunk() -> None:
    out = run(stream(), chunk("Hello"), chunk(" world"), chunk("!", done=True, done_reason="stop"))
    assert len(out) == 4
    assert delta(out[0]) == {"role": "assistant", "content": "Hello"}
    assert delta(out[1]) == {"content": " world"}
    assert delta(out[2]) == {"content": "!"}
    assert (delta(out[3]), reason(out[3])) == ({}, "stop")


def test_writer_stream_shares_one_timestamp() -> None:
    out = run(
        stream(),
        chunk("Hello", created_at=T0),
        chunk(" world", created_at=T10),
        chunk(done=True, done_reason="stop", created_at=T20),
    )
    assert len(out) == 3
    assert {item["created"] for item in out} == {1700000000}
    assert {item["id"] for item in out} == {"chatcmpl-test"}
    assert {item["system_fingerprint"] for item in out} == {SYSTEM_FINGERPRINT}


def test_writer_finish_reason_length() -> None:
    out = run(stream(), chunk("partial", done=True, done_reason="length"))
    assert [reason(item) for item in out] == [None, "length"]


def test_writer_tool_calls_finish_reason() -> None:
    calls = [native_call("call_abc", 0, "get_weather", city="Paris")]
    out = run(stream(), chunk(tool_calls=calls, done=True, done_reason="stop"))
    assert len(out) == 2
    assert (delta(out[1]), reason(out[1])) == ({}, "tool_calls")


def test_writer_metrics_trailer_skips_an_empty_content_chunk() -> None:
    trailer = chunk(done=True, done_reason="stop", prompt_eval_count=3, eval_count=1)
    out = run(stream(include_usage=True), chunk("Hi"), trailer)
    assert len(out) == 3
    assert delta(out[0])["content"] == "Hi"
    assert (delta(out[1]), reason(out[1])) == ({}, "stop")
    assert out[2]["choices"] == [] and out[2]["usage"]["prompt_tokens"] == 3


def test_writer_done_with_logprobs_is_not_a_trailer() -> None:
    logprobs = [{"token": "Hi", "logprob": -0.1}]
    out = run(
        stream(),
        chunk("Hi"),
        chunk(done=True, done_reason="stop", logprobs=logprobs),
        sdk_valid=False,
    )
    assert len(out) == 3
    assert out[1]["choices"][0]["logprobs"] == {"content": logprobs}
    assert reason(out[2]) == "stop"


def test_writer_empty_completion_still_opens_with_a_role_chunk() -> None:
    out = run(stream(), chunk(done=True, done_reason="stop"))
    assert len(out) == 2
    assert delta(out[0]) == {"role": "assistant", "content": ""}
    assert (delta(out[1]), reason(out[1])) == ({}, "stop")


# --- Corral's own stream rules -----------------------------------------------------------------


def test_tool_call_indexes_count_across_chunks() -> None:
    # A backend that leaves every call at index 0 in separate chunks: the client must still see
    # two calls, not one with concatenated arguments.
    out = run(
        stream(),
        chunk(tool_calls=[native_call("a", 0, "f")]),
        chunk(tool_calls=[native_call("b", 0, "g"), native_call("c", 0, "h")]),
        chunk(done=True, done_reason="stop"),
    )
    indexes = [call["index"] for item in out for call in delta(item).get("tool_calls", [])]
    assert indexes == [0, 1, 2]
    assert reason(out[-1]) == "tool_calls"


def test_queue_chunks_never_become_deltas() -> None:
    queued = {**chunk(), "queue_info": {"position": 2, "estimated_wait_ms": 3000}}
    chat_stream = stream()
    assert chat_stream.feed(queued) == []
    out = run(chat_stream, chunk("Hi"), chunk(done=True, done_reason="stop"))
    assert delta(out[0]) == {"role": "assistant", "content": "Hi"}
    assert [reason(item) for item in out] == [None, "stop"]


def test_corral_extras_ride_on_the_finish_chunk() -> None:
    extras = {"request_id": "r1", "queue_info": {"wait_time_ms": 5, "position": 1}}
    chat_stream = stream(include_usage=True)
    chat_stream.feed(chunk("Hi"))
    out = chat_stream.feed(chunk(done=True, done_reason="stop"), extras)
    assert out[0]["request_id"] == "r1" and reason(out[0]) == "stop"
    assert "request_id" not in out[1]


def test_nothing_after_the_final_chunk() -> None:
    chat_stream = stream()
    chat_stream.feed(chunk(done=True, done_reason="stop"))
    assert chat_stream.finished
    assert chat_stream.feed(chunk("late")) == []


# --- completions -------------------------------------------------------------------------------


def generate_chunk(text: str, *, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "created_at": T0, "response": text, "done": done, **extra}


def test_text_completion() -> None:
    from corral_gateway.openai.responses import text_completion

    answer = generate_chunk(
        "Hello", done=True, done_reason="stop", prompt_eval_count=2, eval_count=1
    )
    result = text_completion(answer, completion_id="cmpl-1")
    assert result == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "test-model",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": "Hello", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    Completion.model_validate(result)


def test_completion_stream_with_usage() -> None:
    completion_stream = CompletionStream(
        completion_id="cmpl-1", model="test-model", include_usage=True
    )
    out = [
        *completion_stream.feed(generate_chunk("Hel")),
        *completion_stream.feed({**generate_chunk("lo"), "created_at": T20}),
        *completion_stream.feed(
            generate_chunk("", done=True, done_reason="length", prompt_eval_count=4, eval_count=2)
        ),
    ]
    # The SDK's Completion type has no null finish_reason, but streams carry one until the end
    # (OpenAI's own included); the final chunk is checked.
    Completion.model_validate(out[2])
    assert [item["choices"][0]["text"] for item in out[:3]] == ["Hel", "lo", ""]
    assert [item["choices"][0]["finish_reason"] for item in out[:3]] == [None, None, "length"]
    assert {item["object"] for item in out} == {"text_completion"}
    assert {item["created"] for item in out} == {1700000000}
    # Every chunk carries zeroed usage, as Ollama's; the last one the real counts.
    assert out[0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert out[3]["choices"] == []
    assert out[3]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert completion_stream.finished


def test_completion_stream_without_usage() -> None:
    completion_stream = CompletionStream(completion_id="cmpl-1", model="m")
    out = completion_stream.feed(generate_chunk("x", done=True, done_reason="stop"))
    assert len(out) == 1 and "usage" not in out[0]


# --- embeddings --------------------------------------------------------------------------------


def test_embedding_list_float() -> None:
    answer = {"model": "m", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "prompt_eval_count": 6}
    result = embedding_list("test-model", answer)
    assert result == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.1, 0.2], "index": 0},
            {"object": "embedding", "embedding": [0.3, 0.4], "index": 1},
        ],
        "model": "test-model",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    CreateEmbeddingResponse.model_validate(result)


def test_embedding_list_base64_is_little_endian_float32() -> None:
    vector = [0.5, -1.25, 3.0]
    result = embedding_list("m", {"embeddings": [vector]}, base64_encoded=True)
    encoded = result["data"][0]["embedding"]
    assert encoded == floats_to_base64(vector)
    assert list(struct.unpack("<3f", base64.b64decode(encoded))) == vector


def test_embedding_base64_decodes_as_the_openai_sdk_does() -> None:
    # The SDK asks for base64 by default and decodes it with numpy or array('f').
    import array

    vector = [0.25, 0.5, -0.75]
    encoded = embedding_list("m", {"embeddings": [vector]}, base64_encoded=True)["data"][0]
    decoded = array.array("f", base64.b64decode(encoded["embedding"])).tolist()
    assert decoded == vector


# --- models ------------------------------------------------------------------------------------


def test_model_list() -> None:
    tags = {"models": [{"name": "test-model", "modified_at": "2023-06-16T17:03:22Z"}]}
    assert model_list(tags) == {
        "object": "list",
        "data": [
            {"id": "test-model", "object": "model", "created": 1686935002, "owned_by": "library"}
        ],
    }


def test_model_list_empty_is_null_as_ollama() -> None:
    assert model_list({"models": []}) == {"object": "list", "data": None}


def test_model_list_uses_model_identity() -> None:
    tags = {
        "models": [
            {
                "name": "legacy-name:latest",
                "model": "namespace/exposed-model:latest",
                "modified_at": "2009-02-13T23:31:30Z",
            },
            {"name": "fallback-name:latest", "modified_at": "2009-02-13T23:31:31Z"},
        ]
    }
    data = model_list(tags)["data"]
    assert [(m["id"], m["owned_by"], m["created"]) for m in data] == [
        ("namespace/exposed-model:latest", "namespace", 1234567890),
        ("fallback-name:latest", "library", 1234567891),
    ]
    for item in data:
        Model.model_validate(item)


def test_model_retrieved() -> None:
    show = {"modified_at": "2023-06-16T17:03:22Z", "model_info": {}}
    assert model_retrieved("test-model", show) == {
        "id": "test-model",
        "object": "model",
        "created": 1686935002,
        "owned_by": "library",
    }


@pytest.mark.parametrize(
    ("name", "namespace"),
    [
        ("llama3.2", "library"),
        ("llama3.2:latest", "library"),
        ("jmorgan/llama3:8b", "jmorgan"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", "bartowski"),
        ("registry.ollama.ai/library/llama3.2:latest", "library"),
        ("localhost:5000/ns/model", "ns"),
    ],
)
def test_owner(name: str, namespace: str) -> None:
    assert owner(name) == namespace
