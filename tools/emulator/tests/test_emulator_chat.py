from __future__ import annotations

from typing import Any

import pytest

from corral_emulator import EmulatorConfig, EmulatorState, count_message_tokens, expected_reply
from corral_emulator.testing import METRICS, RFC3339_UTC, chat_body, post_stream
from corral_emulator.testing import EmulatorTestClient as Client


async def chat(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    return await post_stream(client, "/api/chat", body)


async def test_stream_defaults_to_true_and_chunks_have_ollamas_shape(client: Client) -> None:
    body = chat_body("hello there friend", model="Llama3.2")
    chunks = await chat(client, body)

    *tokens, final = chunks
    assert [c["message"]["content"] for c in tokens] == ["Echo:", " hello", " there", " friend"]
    for chunk in tokens:
        assert list(chunk) == ["model", "created_at", "message", "done"]
        assert chunk["model"] == "Llama3.2"  # echoed exactly as sent
        assert RFC3339_UTC.match(chunk["created_at"])
        assert chunk["message"]["role"] == "assistant"
        assert set(chunk["message"]) == {"role", "content"}
        assert chunk["done"] is False

    assert list(final) == ["model", "created_at", "message", "done_reason", "done", *METRICS]
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 4
    assert final["prompt_eval_count"] == count_message_tokens(body["messages"])
    for key in METRICS:
        assert isinstance(final[key], int)
        assert final[key] > 0
    assert final["total_duration"] >= final["eval_duration"]
    assert "context" not in final


async def test_non_stream_concatenates(client: Client) -> None:
    body = chat_body("how are you", stream=False)
    response = await client.post("/api/chat", json=body)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    answer = await response.json()
    assert list(answer) == ["model", "created_at", "message", "done_reason", "done", *METRICS]
    assert answer["message"] == {"role": "assistant", "content": expected_reply("how are you")}
    assert answer["done_reason"] == "stop"
    assert answer["eval_count"] == 4


async def test_echoes_last_user_message_and_counts_all_input(client: Client) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "Echo: first question"},
        {"role": "User", "content": "second one"},
    ]
    body = {"model": "llama3.2", "messages": messages, "stream": False}
    answer = await (await client.post("/api/chat", json=body)).json()
    assert answer["message"]["content"] == "Echo: second one"
    assert answer["prompt_eval_count"] == count_message_tokens(messages)


@pytest.mark.parametrize(("num_predict", "reason"), [(2, "length"), (3, "length"), (4, "stop")])
async def test_num_predict_cuts_with_length(client: Client, num_predict: int, reason: str) -> None:
    body = chat_body("a b", options={"num_predict": num_predict})
    *tokens, final = await chat(client, body)
    text = "".join(chunk["message"]["content"] for chunk in tokens)
    assert text == expected_reply("a b", num_predict)
    assert final["done_reason"] == reason
    assert final["eval_count"] == len(tokens)


async def test_history_is_truncated_to_the_context_window(client: Client) -> None:
    history = [{"role": "user", "content": "word " * 60} for _ in range(6)]
    messages = [{"role": "system", "content": "sys"}, *history, {"role": "user", "content": "q"}]
    assert count_message_tokens(messages) > 256
    body = {"model": "tiny", "messages": messages, "stream": False}
    answer = await (await client.post("/api/chat", json=body)).json()
    assert answer["message"]["content"] == "Echo: q"
    assert answer["prompt_eval_count"] <= 256
    # system (5) + last (5) + three history messages of 65 tokens each fit; four do not.
    assert answer["prompt_eval_count"] == 5 + 5 + 3 * 65

    refused = await client.post("/api/chat", json={**body, "truncate": False})
    assert refused.status == 400


async def test_empty_messages_load_the_model(client: Client, state: EmulatorState) -> None:
    response = await client.post("/api/chat", json={"model": "llama3.2", "keep_alive": "10m"})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    answer = await response.json()
    assert list(answer) == ["model", "created_at", "message", "done_reason", "done"]
    assert answer["message"] == {"role": "assistant", "content": ""}
    assert answer["done_reason"] == "load"
    assert answer["done"] is True
    assert [r.spec.full_name for r in state.runners.loaded()] == ["llama3.2:latest"]
    assert state.runners.loads == 1


@pytest.mark.parametrize("keep_alive", [0, 0.0, "0", "0s"])
async def test_empty_messages_with_keep_alive_zero_unload(
    client: Client, state: EmulatorState, keep_alive: object
) -> None:
    await client.post("/api/chat", json={"model": "llama3.2", "messages": []})
    assert state.runners.loaded()
    response = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [], "keep_alive": keep_alive}
    )
    answer = await response.json()
    assert response.status == 200
    assert answer["done_reason"] == "unload"
    assert answer["message"] == {"role": "assistant", "content": ""}
    assert state.runners.loaded() == []
    # Unloading a model that is not loaded is still fine; an unknown one is not.
    again = await client.post("/api/chat", json={"model": "tiny", "keep_alive": 0})
    assert again.status == 200
    unknown = await client.post("/api/chat", json={"model": "nope", "keep_alive": 0})
    assert unknown.status == 404


async def test_keep_alive_zero_request_unloads_after_answering(
    client: Client, state: EmulatorState
) -> None:
    await chat(client, chat_body(keep_alive=0))
    assert state.runners.loaded() == []
    assert state.runners.unloads == 1


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"", 400, "missing request body"),
        (b"  \n", 400, "missing request body"),
        (b"{", 400, "unexpected EOF"),
        (b"x", 400, "invalid character 'x' looking for beginning of value"),
        (b'{"model" "x"}', 400, "invalid character '\"' after object key"),
        (b"[]", 400, "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            b'{"model":"llama3.2","stream":"no"}',
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            b'{"model":"llama3.2","messages":[{"role":"user","content":5}]}',
            400,
            "json: cannot unmarshal number into Go struct field Message.messages.content "
            "of type string",
        ),
        (b'{"model":"llama3.2","keep_alive":"300"}', 400, 'time: missing unit in duration "300"'),
        (b'{"messages":[]}', 400, "model is required"),
        (b'{"model":""}', 400, "model is required"),
        (b'{"model":"missing:7b"}', 404, "model 'missing:7b' not found"),
        (
            b'{"model":"nomic-embed-text","messages":[{"role":"user","content":"x"}]}',
            400,
            '"nomic-embed-text" does not support chat',
        ),
        (
            b'{"model":"tiny","messages":[{"role":"user","content":"x"}],"tools":[{}]}',
            400,
            "registry.ollama.ai/library/tiny:latest does not support tools",
        ),
        (
            b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"think":true}',
            400,
            '"llama3.2" does not support thinking',
        ),
        (
            b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],'
            b'"options":{"num_predict":"x"}}',
            500,
            'option "num_predict" must be of type integer',
        ),
    ],
)
async def test_errors(client: Client, raw: bytes, status: int, message: str) -> None:
    response = await client.post("/api/chat", data=raw)
    assert response.status == status
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {"error": message}


async def test_go_decoding_quirks_are_accepted(client: Client) -> None:
    # Trailing data after the first value, null fields and case-insensitive keys all pass in Go.
    raw = b'{"Model":"llama3.2","stream":null,"keep_alive":null,"messages":null} trailing'
    response = await client.post("/api/chat", data=raw)
    assert response.status == 200
    assert (await response.json())["done_reason"] == "load"


async def test_requests_are_recorded_verbatim(client: Client, state: EmulatorState) -> None:
    body = chat_body(stream=False, session_id="s-1")
    await client.post("/api/chat", json=body)
    assert state.requests.bodies("chat") == [body]


@pytest.mark.parametrize("config", [EmulatorConfig(record_limit=2)])
async def test_request_record_is_bounded(client: Client, state: EmulatorState) -> None:
    for index in range(3):
        await client.post("/api/chat", json=chat_body(str(index), stream=False))
    assert [b["messages"][0]["content"] for b in state.requests.bodies("chat")] == ["1", "2"]
