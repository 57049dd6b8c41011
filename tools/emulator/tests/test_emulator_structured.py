"""`format`, tool calls, `thinking`, capabilities in /api/show, and fully qualified names."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from corral_emulator import expected_reply, tokenize
from corral_emulator.structured import schema_instance, tool_call_id
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, post_stream
from corral_emulator.tokens import THINKING_PREFIX

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 3},
            },
        },
    },
}
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "kind": {"enum": ["a", "b"]},
        "address": {"$ref": "#/$defs/Address"},
        "nickname": {"anyOf": [{"type": "null"}, {"type": "string"}]},
    },
    "required": ["name", "age", "extra"],
    "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


async def chat(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/chat", json={**body, "stream": False})
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


# --- format ---


async def test_format_json_answers_a_json_object(client: Client) -> None:
    answer = await chat(client, chat_body("hello there", format="json"))
    content = answer["message"]["content"]
    assert orjson.loads(content) == {"reply": expected_reply("hello there")}
    generated = await client.post(
        "/api/generate",
        json={"model": "llama3.2", "prompt": "hi", "format": "json", "stream": False},
    )
    assert orjson.loads((await generated.json())["response"]) == {"reply": expected_reply("hi")}


async def test_format_schema_answers_an_instance_of_the_schema(client: Client) -> None:
    chunks = await post_stream(client, "/api/chat", chat_body("hi you", format=SCHEMA))
    content = "".join(chunk["message"]["content"] for chunk in chunks)
    value = orjson.loads(content)
    assert value == {
        "name": "Echo: hi you",
        "age": 3,
        "score": 3.0,
        "ok": True,
        "tags": ["Echo: hi you", "Echo: hi you"],
        "kind": "a",
        "address": {"city": "Echo: hi you"},
        "nickname": "Echo: hi you",
        "extra": "Echo: hi you",
    }
    assert chunks[-1]["eval_count"] == len(tokenize(content))
    # Deterministic: the same request, the same object.
    again = await chat(client, chat_body("hi you", format=SCHEMA))
    assert again["message"]["content"] == content


@pytest.mark.parametrize("empty", ["", None])
async def test_empty_format_is_no_format(client: Client, empty: object) -> None:
    answer = await chat(client, chat_body("plain", format=empty))
    assert answer["message"]["content"] == expected_reply("plain")


@pytest.mark.parametrize(("value", "quoted"), [("xml", '"\\"xml\\""'), (5, '"5"'), ([1], '"[1]"')])
async def test_invalid_format_fails_as_the_runner_does(
    client: Client, value: object, quoted: str
) -> None:
    response = await client.post("/api/chat", json=chat_body(format=value))
    assert response.status == 500
    assert await response.json() == {
        "error": f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    }


def test_schema_instance_honours_bounds_and_recursion() -> None:
    assert schema_instance({"type": "integer", "minimum": 10}, "a b") == 10
    assert schema_instance({"type": "string", "maxLength": 3}, "abcdef") == "abc"
    assert schema_instance({"type": "string", "format": "date"}, "x") == "2025-01-01"
    assert schema_instance({"type": "array", "maxItems": 0}, "x") == []
    assert schema_instance({"type": ["null", "boolean"]}, "x") is True
    recursive = {"type": "object", "properties": {"next": {"$ref": "#"}}}
    value = schema_instance(recursive, "x")
    depth = 0
    while isinstance(value, dict):
        value, depth = value["next"], depth + 1
    assert value is None and depth > 1
    # Properties that all refer back to the root stay bounded (not 10**8 nodes).
    wide = {"type": "object", "properties": {f"p{i}": {"$ref": "#"} for i in range(10)}}
    assert isinstance(schema_instance(wide, "x"), dict)


# --- tools ---


async def test_tools_answer_with_a_call_of_the_first_tool(client: Client) -> None:
    body = chat_body("weather in Paris", tools=[WEATHER_TOOL, {"type": "function"}])
    chunks = await post_stream(client, "/api/chat", body)
    *tokens, call_chunk, final = chunks
    assert tokens == []  # a model that calls a tool says nothing else
    arguments = {"city": "weather in Paris", "unit": "celsius", "days": 3}
    assert call_chunk["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": tool_call_id("get_weather", arguments),
                "function": {"index": 0, "name": "get_weather", "arguments": arguments},
            }
        ],
    }
    assert call_chunk["done"] is False
    assert call_chunk["message"]["tool_calls"][0]["id"].startswith("call_")
    assert len(call_chunk["message"]["tool_calls"][0]["id"]) == len("call_") + 8
    # Ollama says "stop" (not "tool_calls"): that is the /v1 layer's translation.
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] > 0

    answer = await chat(client, body)
    assert answer["message"]["tool_calls"] == call_chunk["message"]["tool_calls"]
    assert answer["message"]["content"] == ""


async def test_after_a_tool_result_the_model_answers_in_words(client: Client) -> None:
    messages = [
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather"}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    answer = await chat(
        client, {"model": "llama3.2", "messages": messages, "tools": [WEATHER_TOOL]}
    )
    assert answer["message"] == {"role": "assistant", "content": expected_reply("weather in Paris")}


async def test_empty_tools_change_nothing(client: Client) -> None:
    answer = await chat(client, chat_body("hi", tools=[]))
    assert answer["message"] == {"role": "assistant", "content": expected_reply("hi")}


async def test_tools_on_a_model_without_the_capability(client: Client) -> None:
    response = await client.post("/api/chat", json=chat_body(model="tiny", tools=[WEATHER_TOOL]))
    assert response.status == 400
    assert await response.json() == {
        "error": "registry.ollama.ai/library/tiny:latest does not support tools"
    }


# --- thinking ---


async def test_a_thinking_model_streams_thinking_before_content(client: Client) -> None:
    chunks = await post_stream(client, "/api/chat", chat_body("why sky", model="qwen3:0.6b"))
    thinking = [c for c in chunks if c["message"].get("thinking")]
    content = [c for c in chunks[:-1] if c["message"]["content"]]
    # Ollama turns thinking on for a thinking model when the request does not say.
    assert "".join(c["message"]["thinking"] for c in thinking) == THINKING_PREFIX + "why sky"
    assert all(c["message"]["content"] == "" for c in thinking)
    assert chunks.index(thinking[-1]) < chunks.index(content[0])
    assert list(thinking[0]["message"]) == ["role", "content", "thinking"]
    assert "".join(c["message"]["content"] for c in content) == expected_reply("why sky")
    assert chunks[-1]["eval_count"] == len(thinking) + len(content)


async def test_non_streamed_thinking_is_accumulated(client: Client) -> None:
    answer = await chat(client, chat_body("why", model="deepseek-r1:1.5b", think="high"))
    assert answer["message"] == {
        "role": "assistant",
        "content": expected_reply("why"),
        "thinking": THINKING_PREFIX + "why",
    }


async def test_think_false_turns_thinking_off(client: Client) -> None:
    answer = await chat(client, chat_body("why", model="qwen3:0.6b", think=False))
    assert answer["message"] == {"role": "assistant", "content": expected_reply("why")}


async def test_thinking_then_a_tool_call(client: Client) -> None:
    chunks = await post_stream(
        client, "/api/chat", chat_body("go", model="qwen3:0.6b", tools=[WEATHER_TOOL])
    )
    kinds = [
        "thinking"
        if c["message"].get("thinking")
        else "tools"
        if "tool_calls" in c["message"]
        else "x"
        for c in chunks[:-1]
    ]
    assert kinds == ["thinking"] * len(tokenize(THINKING_PREFIX + "go")) + ["tools"]


async def test_generate_thinks_too(client: Client) -> None:
    chunks = await post_stream(
        client, "/api/generate", {"model": "qwen3:0.6b", "prompt": "hm", "think": True}
    )
    assert list(chunks[0]) == ["model", "created_at", "response", "thinking", "done"]
    assert "".join(c.get("thinking", "") for c in chunks) == THINKING_PREFIX + "hm"
    response = await client.post(
        "/api/generate", json={"model": "qwen3:0.6b", "prompt": "hm", "stream": False}
    )
    answer = await response.json()
    assert (answer["response"], answer["thinking"]) == (
        expected_reply("hm"),
        THINKING_PREFIX + "hm",
    )
    assert list(answer)[:5] == ["model", "created_at", "response", "thinking", "done"]


@pytest.mark.parametrize(
    ("think", "error"),
    [
        (True, '"llama3.2" does not support thinking'),
        ("low", '"llama3.2" does not support thinking'),
        (
            "very",
            'invalid think value: "very" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (3, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
    ],
)
async def test_think_errors(client: Client, think: object, error: str) -> None:
    for path, body in (
        ("/api/chat", chat_body(think=think)),
        ("/api/generate", {"model": "llama3.2", "prompt": "x", "think": think}),
    ):
        response = await client.post(path, json=body)
        assert response.status == 400
        assert await response.json() == {"error": error}


# --- capabilities and names ---


async def test_show_lists_capabilities(client: Client) -> None:
    async def capabilities(model: str) -> list[str]:
        shown = await (await client.post("/api/show", json={"model": model})).json()
        result: list[str] = shown["capabilities"]
        return result

    assert await capabilities("qwen3:0.6b") == ["completion", "tools", "thinking"]
    assert await capabilities("deepseek-r1:1.5b") == ["completion", "thinking"]
    assert await capabilities("llama3.2") == ["completion", "tools"]


@pytest.mark.parametrize(
    "name",
    [
        "registry.ollama.ai/library/llama3.2:latest",
        "library/llama3.2",
        "REGISTRY.OLLAMA.AI/Library/Llama3.2",
    ],
)
async def test_fully_qualified_names_work_everywhere(client: Client, name: str) -> None:
    answer = await chat(client, chat_body("hi", model=name))
    assert answer["model"] == name  # echoed as sent
    assert answer["message"]["content"] == expected_reply("hi")
    generated = await client.post(
        "/api/generate", json={"model": name, "prompt": "x", "stream": False}
    )
    assert generated.status == 200
    assert (await client.post("/api/show", json={"model": name})).status == 200
    embedded = await client.post(
        "/api/embed", json={"model": "registry.ollama.ai/library/nomic-embed-text", "input": "x"}
    )
    assert embedded.status == 200
    copied = await client.post("/api/copy", json={"source": name, "destination": "mine"})
    assert copied.status == 200
    deleted = await client.delete("/api/delete", json={"model": "registry.ollama.ai/library/mine"})
    assert deleted.status == 200


async def test_a_qualified_name_in_another_namespace_is_another_model(client: Client) -> None:
    response = await client.post("/api/chat", json=chat_body(model="someone/llama3.2"))
    assert response.status == 404
    assert await response.json() == {"error": "model 'someone/llama3.2' not found"}
