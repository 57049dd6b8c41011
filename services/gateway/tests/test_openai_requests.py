"""OpenAI request bodies to native Ollama bodies.

Golden cases come from Ollama's own tests (ollama/ollama `middleware/openai_test.go`
TestChatMiddleware, TestCompletionsMiddleware, TestEmbeddingsMiddleware and `openai/openai_test.go`
TestFromChatRequest_*, TestFromCompleteRequest_*): the same bodies in, the same native requests
out (compared as Go compares its structs: fields Go leaves at their zero value are absent here).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from corral_gateway.openai.errors import OpenAIError
from corral_gateway.openai.requests import (
    ChatCompletionRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
    think_from_effort,
)

PREFIX = "data:image/jpeg;base64,"
IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNk+A8AAQUBAScY42YAAAAASUVORK5CYII="
)
DEFAULT_OPTIONS = {"temperature": 1.0, "top_p": 1.0}
WEATHER_CALL = {
    "id": "id",
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "arguments": '{"location": "Paris, France", "format": "celsius"}',
    },
}
NATIVE_WEATHER_CALL = {
    "id": "id",
    "function": {
        "index": 0,
        "name": "get_current_weather",
        "arguments": {"location": "Paris, France", "format": "celsius"},
    },
}
QUESTION = {"role": "user", "content": "What's the weather like in Paris Today?"}


def chat(body: dict[str, Any], header: str | None = None) -> dict[str, Any]:
    return parse_chat(json.dumps(body).encode()).to_ollama(header)


def chat_error(body: dict[str, Any] | bytes) -> OpenAIError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(OpenAIError) as caught:
        parse_chat(raw).to_ollama()
    return caught.value


# --- TestChatMiddleware -------------------------------------------------------------------------


def test_chat_handler() -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "Hello"}]}
    assert chat(body) == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "options": DEFAULT_OPTIONS,
        "stream": False,
    }


@pytest.mark.parametrize("usage", [False, True], ids=["options", "streaming usage"])
def test_chat_handler_with_options(usage: bool) -> None:
    body: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": True,
        "max_tokens": 999,
        "seed": 123,
        "stop": ["\n", "stop"],
        "temperature": 3.0,
        "frequency_penalty": 4.0,
        "presence_penalty": 5.0,
        "top_p": 6.0,
        "response_format": {"type": "json_object"},
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    assert chat(body) == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "Hello"}],
        "options": {
            "num_predict": 999,
            "seed": 123,
            "stop": ["\n", "stop"],
            "temperature": 3.0,
            "frequency_penalty": 4.0,
            "presence_penalty": 5.0,
            "top_p": 6.0,
        },
        "format": "json",
        "stream": True,
    }
    assert parse_chat(json.dumps(body).encode()).include_usage is usage


def test_chat_handler_with_image_content() -> None:
    body = {
        "model": "test-model",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello"},
                    {"type": "image_url", "image_url": {"url": PREFIX + IMAGE}},
                ],
            }
        ],
    }
    assert chat(body)["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "", "images": [IMAGE]},
    ]


def test_chat_handler_with_tools() -> None:
    body = {
        "model": "test-model",
        "messages": [QUESTION, {"role": "assistant", "tool_calls": [WEATHER_CALL]}],
    }
    assert chat(body)["messages"] == [
        QUESTION,
        {"role": "assistant", "content": "", "tool_calls": [NATIVE_WEATHER_CALL]},
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "Let's see what the weather is like in Paris",
            "Let's see what the weather is like in Paris",
        ),
        ("", ""),
    ],
    ids=["content", "empty content"],
)
def test_chat_handler_with_tools_and_content(content: str, expected: str) -> None:
    body = {
        "model": "test-model",
        "messages": [
            QUESTION,
            {"role": "assistant", "content": content, "tool_calls": [WEATHER_CALL]},
        ],
    }
    assert chat(body)["messages"][1] == {
        "role": "assistant",
        "content": expected,
        "tool_calls": [NATIVE_WEATHER_CALL],
    }


def test_chat_handler_with_tools_and_thinking_content() -> None:
    body = {
        "model": "test-model",
        "messages": [
            QUESTION,
            {
                "role": "assistant",
                "reasoning": "Let's see what the weather is like in Paris",
                "tool_calls": [WEATHER_CALL],
            },
        ],
    }
    assert chat(body)["messages"][1] == {
        "role": "assistant",
        "content": "",
        "thinking": "Let's see what the weather is like in Paris",
        "tool_calls": [NATIVE_WEATHER_CALL],
    }


@pytest.mark.parametrize(
    ("call", "reference", "expected"),
    [
        (
            {**WEATHER_CALL, "id": "id_abc"},
            {"tool_call_id": "id_abc"},
            {"tool_name": "get_current_weather", "tool_call_id": "id_abc"},
        ),
        (WEATHER_CALL, {"name": "get_current_weather"}, {"tool_name": "get_current_weather"}),
    ],
    ids=["call id", "name"],
)
def test_tool_response(
    call: dict[str, Any], reference: dict[str, Any], expected: dict[str, Any]
) -> None:
    """A tool message names its tool by the call's id (looked up) or by name."""
    body = {
        "model": "test-model",
        "messages": [
            QUESTION,
            {"role": "assistant", "tool_calls": [call]},
            {
                "role": "tool",
                **reference,
                "content": "The weather in Paris is 20 degrees Celsius",
            },
        ],
    }
    assert chat(body)["messages"][2] == {
        "role": "tool",
        "content": "The weather in Paris is 20 degrees Celsius",
        **expected,
    }


def test_tool_call_id_lookup_takes_the_last_duplicate() -> None:
    first = {**WEATHER_CALL, "function": {"name": "first", "arguments": "{}"}}
    second = {**WEATHER_CALL, "function": {"name": "second", "arguments": "{}"}}
    body = {
        "model": "m",
        "messages": [
            {"role": "assistant", "tool_calls": [first]},
            {"role": "assistant", "tool_calls": [second]},
            {"role": "tool", "tool_call_id": "id", "content": "x"},
        ],
    }
    assert chat(body)["messages"][2]["tool_name"] == "second"


def test_chat_handler_with_streaming_tools() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather",
            "parameters": {
                "type": "object",
                "required": ["location"],
                "properties": {
                    "location": {"type": "string", "description": "The city and state"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
            },
            # OpenAI's field; Ollama's struct has none, so it does not reach the backend.
            "strict": True,
        },
    }
    body = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "What's the weather like in Paris?"}],
        "stream": True,
        "tools": [tool],
    }
    native = chat(body)
    assert native["stream"] is True
    assert native["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather",
                "parameters": {
                    "type": "object",
                    "required": ["location"],
                    "properties": tool["function"]["parameters"]["properties"],  # type: ignore[index]
                },
            },
        }
    ]


def test_chat_handler_error_forwarding() -> None:
    error = chat_error({"model": "test-model", "messages": [{"role": "user", "content": 2}]})
    assert error.status == 400
    assert error.body()["error"]["message"] == "invalid message content type: float64"
    assert error.body()["error"]["type"] == "invalid_request_error"
    assert error.body()["error"]["code"] is None


# --- openai_test.go: FromChatRequest -----------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        (None, None),
        ("high", "high"),
        ("medium", "medium"),
        ("low", "low"),
        ("max", "max"),
        ("minimal", "low"),
        ("xhigh", "max"),
        ("ultra", "max"),
        ("none", False),
    ],
)
def test_reasoning_effort(effort: str | None, think: bool | str | None) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if effort is not None:
        body["reasoning_effort"] = effort
    native = chat(body)
    assert native.get("think") == think
    assert ("think" in native) is (think is not None)


def test_reasoning_effort_invalid() -> None:
    error = chat_error(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "reasoning_effort": "extreme",
        }
    )
    assert error.message == (
        'invalid reasoning value: "extreme" (must be "minimal", "low", "medium", "high", '
        '"xhigh", "ultra", "max", or "none")'
    )


def test_reasoning_object_wins_over_reasoning_effort() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning": {"effort": "low"},
        "reasoning_effort": "high",
    }
    assert chat(body)["think"] == "low"
    # Present but empty: the model's default, as in Ollama (reasoning_effort is not read).
    assert "think" not in chat({**body, "reasoning": {}})


def test_think_from_effort_empty_is_default() -> None:
    assert think_from_effort("") is None


def test_with_logprobs() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hello"}],
        "logprobs": True,
        "top_logprobs": 5,
    }
    native = chat(body)
    assert native["logprobs"] is True
    assert native["top_logprobs"] == 5
    default = chat({"model": "m", "messages": [{"role": "user", "content": "Hello"}]})
    assert "logprobs" not in default and "top_logprobs" not in default


def test_with_image_decodes_the_data_url() -> None:
    native = chat(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": PREFIX + IMAGE}}],
                }
            ],
        }
    )
    assert base64.b64decode(native["messages"][0]["images"][0]) == base64.b64decode(IMAGE)


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"type": "image_url", "image_url": "https://x/y.png"},
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/gif;base64," + IMAGE}},
            "invalid image input",
        ),
        ({"type": "image_url", "image_url": {"url": PREFIX + "@@@"}}, "invalid image input"),
        ({"type": "image_url", "image_url": {"url": 5}}, "invalid message format"),
        ({"type": "text", "text": 5}, "invalid message format"),
        ({"type": "video"}, "invalid message format"),
        ("text", "invalid message format"),
        ({"type": "input_audio", "input_audio": "x"}, "invalid input_audio format"),
        ({"type": "input_audio", "input_audio": {}}, "invalid input_audio format: missing data"),
    ],
)
def test_content_part_errors(part: Any, message: str) -> None:
    error = chat_error({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert error.message == message
    assert error.status == 400


def test_image_url_as_a_plain_string_and_blank_mime_type() -> None:
    native = chat(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": "data:;base64," + IMAGE}],
                }
            ],
        }
    )
    assert native["messages"][0]["images"] == [IMAGE]


def test_input_audio_goes_as_an_image() -> None:
    audio = base64.b64encode(b"RIFF....WAVE").decode()
    native = chat(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": audio}}],
                }
            ],
        }
    )
    assert native["messages"][0]["images"] == [audio]


def test_tool_calls_go_on_the_last_part_message() -> None:
    native = chat(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    "reasoning": "why",
                    "tool_calls": [WEATHER_CALL],
                }
            ],
        }
    )
    assert native["messages"] == [
        {"role": "assistant", "content": "a"},
        {
            "role": "assistant",
            "content": "b",
            "thinking": "why",
            "tool_calls": [NATIVE_WEATHER_CALL],
        },
    ]


@pytest.mark.parametrize("arguments", ["not json", "[1]", ""])
def test_invalid_tool_call_arguments(arguments: str) -> None:
    call = {**WEATHER_CALL, "function": {"name": "f", "arguments": arguments}}
    error = chat_error({"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}]})
    assert error.message == "invalid tool call arguments"


def test_missing_content_without_tool_calls() -> None:
    assert chat_error({"model": "m", "messages": [{"role": "user"}]}).message == (
        "invalid message content type: <nil>"
    )
    # An empty (not absent) tool_calls list lets content be left out, as in Go.
    assert chat({"model": "m", "messages": [{"role": "assistant", "tool_calls": []}]})[
        "messages"
    ] == [{"role": "assistant", "content": ""}]


@pytest.mark.parametrize("messages", [[], None])
def test_messages_required(messages: Any) -> None:
    body: dict[str, Any] = {"model": "m"}
    if messages is not None:
        body["messages"] = messages
    assert chat_error(body).message == "[] is too short - 'messages'"


@pytest.mark.parametrize(
    ("schema_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": " JSON_OBJECT "}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        ({"type": "json_schema"}, None),
        ({"type": "text"}, None),
    ],
)
def test_response_format(schema_format: dict[str, Any], expected: Any) -> None:
    native = chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": schema_format,
        }
    )
    assert native.get("format") == expected


def test_stop_as_a_string_and_non_strings_skipped() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert chat({**body, "stop": "END"})["options"]["stop"] == ["END"]
    assert chat({**body, "stop": ["a", 1, "b"]})["options"]["stop"] == ["a", "b"]
    assert "stop" not in chat({**body, "stop": 5})["options"]


def test_max_completion_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert chat({**body, "max_completion_tokens": 7})["options"]["num_predict"] == 7
    # max_tokens wins, so a body that works against Ollama behaves the same.
    both = {**body, "max_completion_tokens": 7, "max_tokens": 3}
    assert chat(both)["options"]["num_predict"] == 3


def test_debug_render_only_is_forwarded() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "_debug_render_only": True,
    }
    assert chat(body)["_debug_render_only"] is True


GO_FIELD = "json: cannot unmarshal {} into Go struct field {} of type {}"


# --- Go's decoding errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"  ", "missing request body"),
        (b'{"model":', "unexpected EOF"),
        (b"{x}", "invalid character 'x' looking for beginning of value"),
        (b"[1]", "json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"),
        (
            b'{"model":"m","stream":"yes","messages":[]}',
            GO_FIELD.format("string", "ChatCompletionRequest.stream", "bool"),
        ),
        (b'{"model":1}', GO_FIELD.format("number", "ChatCompletionRequest.model", "string")),
        (
            b'{"messages":{}}',
            GO_FIELD.format("object", "ChatCompletionRequest.messages", "[]openai.Message"),
        ),
        (
            b'{"messages":[null]}',
            GO_FIELD.format("null", "ChatCompletionRequest.messages", "openai.Message"),
        ),
        (
            b'{"messages":[{"role":5}]}',
            GO_FIELD.format("number", "Message.messages.role", "string"),
        ),
        (
            b'{"max_tokens":1.5}',
            GO_FIELD.format("number 1.5", "ChatCompletionRequest.max_tokens", "int"),
        ),
        (
            b'{"max_tokens":9223372036854775808}',
            GO_FIELD.format(
                "number 9223372036854775808", "ChatCompletionRequest.max_tokens", "int"
            ),
        ),
        (
            b'{"temperature":"hot"}',
            GO_FIELD.format("string", "ChatCompletionRequest.temperature", "float64"),
        ),
        (
            b'{"stream_options":{"include_usage":1}}',
            GO_FIELD.format("number", "StreamOptions.stream_options.include_usage", "bool"),
        ),
        (
            b'{"tools":[{"function":{"parameters":{"required":[1]}}}]}',
            GO_FIELD.format(
                "number", "ToolFunctionParameters.tools.function.parameters.required", "string"
            ),
        ),
        (
            b'{"_debug_render_only":"x"}',
            GO_FIELD.format("string", "ChatCompletionRequest._debug_render_only", "bool"),
        ),
    ],
)
def test_decoding_errors_read_as_go_writes_them(raw: bytes, message: str) -> None:
    error = chat_error(raw)
    assert (error.status, error.message, error.type) == (400, message, "invalid_request_error")


def test_first_wrong_field_in_the_body_order_is_reported() -> None:
    error = chat_error(b'{"top_p":"x","stream":"y"}')
    assert "ChatCompletionRequest.top_p" in error.message


def test_null_leaves_the_zero_value() -> None:
    native = chat(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": None,
            "temperature": None,
            "tools": None,
            "stream_options": None,
        }
    )
    assert native["stream"] is False
    assert native["options"] == DEFAULT_OPTIONS


def test_too_deep_is_refused() -> None:
    raw = (
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"x":'
        + b"[" * 200
        + b"]" * 200
        + b"}"
    )
    assert "exceeded max depth" in chat_error(raw).message


def test_unknown_fields_are_ignored() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "n": 2,
        "tool_choice": "auto",
        "logit_bias": {"1": 2},
        "service_tier": "auto",
    }
    assert chat(body)["options"] == DEFAULT_OPTIONS


# --- Corral's extensions -----------------------------------------------------------------------


BASE = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("extra", "header", "session"),
    [
        ({"metadata": {"session_id": "meta"}, "session_id": "body", "user": "u"}, "hdr", "meta"),
        ({"session_id": "body", "user": "u"}, "hdr", "body"),
        ({"user": "u"}, "hdr", None),  # the native pipeline takes the header
        ({"user": "u"}, None, "u"),
        ({"user": "someone@example.com"}, None, None),  # not an id: ignored, not refused
        ({"metadata": {"session_id": 5}, "user": "u"}, None, "u"),
        ({}, None, None),
    ],
)
def test_session_precedence(extra: dict[str, Any], header: str | None, session: str | None) -> None:
    native = chat({**BASE, **extra}, header)
    assert native.get("session_id") == session


def test_user_as_session_can_be_turned_off() -> None:
    request = parse_chat(json.dumps({**BASE, "user": "u"}).encode())
    assert "session_id" not in request.to_ollama(None, user_is_session=False)


def test_request_id_and_priority_travel_as_native_fields() -> None:
    native = chat({**BASE, "request_id": "r-1", "priority": "batch"})
    assert (native["request_id"], native["priority"]) == ("r-1", "batch")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"session_id": "a.b"}, "session_id"),
        ({"metadata": {"session_id": "x" * 200}}, "session_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"priority": "urgent"}, "priority"),
    ],
)
def test_bad_extension_values_are_refused(extra: dict[str, Any], param: str) -> None:
    error = chat_error({**BASE, **extra})
    assert (error.status, error.param) == (400, param)


def test_request_model_is_frozen() -> None:
    request = parse_chat(json.dumps(BASE).encode())
    assert isinstance(request, ChatCompletionRequest)
    with pytest.raises(ValueError, match="frozen"):
        request.model = "other"  # type: ignore[misc]


# --- TestCompletionsMiddleware ----------------------------------------------------------------


def completion(body: dict[str, Any]) -> dict[str, Any]:
    return parse_completion(json.dumps(body).encode()).to_ollama()


@pytest.mark.parametrize(
    ("stream", "stream_options"),
    [(None, None), (True, None), (True, {"include_usage": True})],
    ids=["handler", "stream", "stream with usage"],
)
def test_completions_handler(stream: bool | None, stream_options: Any) -> None:
    body: dict[str, Any] = {
        "model": "test-model",
        "prompt": "Hello",
        "temperature": 0.8,
        "stop": ["\n", "stop"],
        "suffix": "suffix",
    }
    if stream is not None:
        body["stream"] = stream
    if stream_options is not None:
        body["stream_options"] = stream_options
    assert completion(body) == {
        "model": "test-model",
        "prompt": "Hello",
        "options": {
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "temperature": 0.8,
            "top_p": 1.0,
            "stop": ["\n", "stop"],
        },
        "suffix": "suffix",
        "stream": bool(stream),
    }


def test_completions_handler_error_forwarding() -> None:
    raw = json.dumps(
        {
            "model": "test-model",
            "prompt": "Hello",
            "temperature": None,
            "stop": [1, 2],
            "suffix": "suffix",
        }
    ).encode()
    with pytest.raises(OpenAIError) as caught:
        parse_completion(raw).to_ollama()
    assert caught.value.message == "invalid type for 'stop' field: float64"
    assert caught.value.type == "invalid_request_error"


def test_completion_logprobs_and_defaults() -> None:
    native = completion({"model": "m", "prompt": "Hello", "logprobs": 5})
    assert (native["logprobs"], native["top_logprobs"]) == (True, 5)
    assert native["options"]["temperature"] == 1.0  # absent: OpenAI's default
    plain = completion({"model": "m", "prompt": "Hello", "logprobs": 0, "top_p": 0})
    assert "logprobs" not in plain and plain["options"]["top_p"] == 1.0


def test_completion_prompt_must_be_a_string() -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_completion(b'{"model":"m","prompt":["a","b"]}')
    assert caught.value.message == (
        "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string"
    )


# --- TestEmbeddingsMiddleware -----------------------------------------------------------------


def embedding(body: dict[str, Any]) -> dict[str, Any]:
    return parse_embedding(json.dumps(body).encode()).to_ollama()


def test_embed_handler_single_and_batch_input() -> None:
    assert embedding({"input": "Hello", "model": "test-model"}) == {
        "input": "Hello",
        "model": "test-model",
    }
    assert embedding({"input": ["Hello", "World"], "model": "test-model"}) == {
        "input": ["Hello", "World"],
        "model": "test-model",
    }


def test_embed_empty_string_becomes_one_empty_input() -> None:
    assert embedding({"input": "", "model": "m"})["input"] == [""]


def test_embed_dimensions() -> None:
    assert embedding({"input": "a", "model": "m", "dimensions": 64})["dimensions"] == 64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "test-model"}, "invalid input"),
        ({"model": "m", "input": []}, "invalid input"),
        ({"model": "m", "input": [[1, 2]]}, "invalid input type"),
        ({"model": "m", "input": 5}, "invalid input type"),
        (
            {"model": "m", "input": "a", "encoding_format": "int8"},
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
    ],
)
def test_embed_handler_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        embedding(body)
    assert (caught.value.status, caught.value.message) == (400, message)


def test_embed_encoding_format_ignores_case() -> None:
    request = parse_embedding(b'{"model":"m","input":"a","encoding_format":"BASE64"}')
    assert request.base64
    request.to_ollama()
