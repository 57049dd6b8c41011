from __future__ import annotations

from typing import Any

import pytest

from corral_emulator import EmulatorState, count_prompt_tokens, expected_reply
from corral_emulator.testing import METRICS, RFC3339_UTC, post_stream
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.tokens import token_ids, tokenize


async def generate(client: Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    return await post_stream(client, "/api/generate", body)


async def test_stream_defaults_to_true_and_chunks_have_ollamas_shape(client: Client) -> None:
    *tokens, final = await generate(client, {"model": "llama3.2:latest", "prompt": "why sky"})
    assert [chunk["response"] for chunk in tokens] == ["Echo:", " why", " sky"]
    for chunk in tokens:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["model"] == "llama3.2:latest"
        assert RFC3339_UTC.match(chunk["created_at"])
        assert chunk["done"] is False
    assert list(final) == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        *METRICS,
    ]
    assert final["response"] == ""
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["eval_count"] == 3
    assert final["prompt_eval_count"] == count_prompt_tokens(["why sky"])
    assert final["context"] == token_ids(tokenize("why sky")) + token_ids(tokens_of(tokens))
    assert all(isinstance(final[key], int) and final[key] > 0 for key in METRICS)


def tokens_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [chunk["response"] for chunk in chunks]


async def test_non_stream(client: Client) -> None:
    body = {"model": "qwen2.5:0.5b", "prompt": "tell me", "system": "be kind", "stream": False}
    response = await client.post("/api/generate", json=body)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    answer = await response.json()
    assert answer["response"] == expected_reply("tell me")
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["prompt_eval_count"] == count_prompt_tokens(["be kind", "tell me"])
    assert answer["model"] == "qwen2.5:0.5b"


async def test_context_is_carried_and_absent_in_raw_mode(client: Client) -> None:
    body = {"model": "tiny", "prompt": "a", "stream": False, "context": [1, 2, 3]}
    answer = await (await client.post("/api/generate", json=body)).json()
    assert answer["context"][:3] == [1, 2, 3]
    assert answer["prompt_eval_count"] == count_prompt_tokens(["a"]) + 3
    raw = {"model": "tiny", "prompt": "a", "stream": False, "raw": True}
    answer = await (await client.post("/api/generate", json=raw)).json()
    assert "context" not in answer


async def test_num_predict(client: Client) -> None:
    body = {"model": "tiny", "prompt": "one two three", "options": {"num_predict": 2}}
    *tokens, final = await generate(client, body)
    assert "".join(tokens_of(tokens)) == expected_reply("one two three", 2) == "Echo: one"
    assert final["done_reason"] == "length"
    assert final["eval_count"] == 2


async def test_shift_false_stops_at_a_full_context(client: Client) -> None:
    prompt = " ".join(["w"] * 248)  # 248 + 4 = 252 prompt tokens leave room for 4 of 256
    body = {"model": "tiny", "prompt": prompt, "stream": False, "shift": False}
    answer = await (await client.post("/api/generate", json=body)).json()
    assert answer["eval_count"] == 4
    assert answer["done_reason"] == "length"


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    client: Client, state: EmulatorState
) -> None:
    load = await client.post("/api/generate", json={"model": "tiny", "stream": True})
    assert load.headers["Content-Type"] == "application/json; charset=utf-8"
    answer = await load.json()
    assert list(answer) == ["model", "created_at", "response", "done", "done_reason"]
    assert (answer["response"], answer["done"], answer["done_reason"]) == ("", True, "load")
    assert [r.spec.full_name for r in state.runners.loaded()] == ["tiny:latest"]

    unload = await client.post("/api/generate", json={"model": "tiny", "keep_alive": "0"})
    answer = await unload.json()
    assert (answer["response"], answer["done"], answer["done_reason"]) == ("", True, "unload")
    assert state.runners.loaded() == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "x"}, 404, "model '' not found"),
        ({"model": "Ghost", "prompt": "x"}, 404, "model 'Ghost' not found"),
        (
            {"model": "tiny", "prompt": 3},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.prompt "
            "of type string",
        ),
        (
            {"model": "tiny", "prompt": "x", "context": [1.5]},
            400,
            "json: cannot unmarshal number 1.5 into Go struct field GenerateRequest.context "
            "of type int",
        ),
        (
            {"model": "tiny", "prompt": "x", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            {"model": "nomic-embed-text", "prompt": "x"},
            400,
            '"nomic-embed-text" does not support generate',
        ),
        ({"model": "tiny", "prompt": "x", "keep_alive": True}, 400, "Unsupported type: 'bool'"),
    ],
)
async def test_errors(client: Client, body: dict[str, Any], status: int, message: str) -> None:
    response = await client.post("/api/generate", json=body)
    assert response.status == status
    assert await response.json() == {"error": message}


async def test_empty_body(client: Client) -> None:
    response = await client.post("/api/generate")
    assert response.status == 400
    assert await response.json() == {"error": "missing request body"}


async def test_load_time_is_paid_once(client: Client, state: EmulatorState) -> None:
    state.config.load_ms = 30
    body = {"model": "tiny", "prompt": "x", "stream": False}
    first = await (await client.post("/api/generate", json=body)).json()
    second = await (await client.post("/api/generate", json=body)).json()
    assert first["load_duration"] >= 30_000_000
    assert second["load_duration"] < 30_000_000
    assert state.runners.loads == 1


async def test_a_different_num_ctx_reloads(client: Client, state: EmulatorState) -> None:
    body = {"model": "llama3.2", "prompt": "x", "stream": False}
    await client.post("/api/generate", json=body)
    await client.post("/api/generate", json={**body, "options": {"num_ctx": 2048}})
    assert state.runners.loads == 2
    (runner,) = state.runners.loaded()
    assert runner.context_length == 2048
    # num_ctx above the trained context is capped.
    await client.post("/api/generate", json={**body, "options": {"num_ctx": 10**6}})
    assert state.runners.loaded()[0].context_length == 4096


async def test_timing_knobs_show_in_durations(client: Client, state: EmulatorState) -> None:
    state.config.token_delay_ms = 5
    state.config.prompt_ms_per_token = 1
    body = {"model": "tiny", "prompt": "a b", "stream": False}
    answer = await (await client.post("/api/generate", json=body)).json()
    assert answer["eval_duration"] >= 3 * 5_000_000
    assert answer["prompt_eval_duration"] >= answer["prompt_eval_count"] * 1_000_000
    assert answer["total_duration"] >= answer["eval_duration"] + answer["prompt_eval_duration"]
