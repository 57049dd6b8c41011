from __future__ import annotations

import asyncio

import aiohttp
import pytest

from corral_emulator import EmulatorState, expected_reply
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, parse_ndjson, wait_for_state


async def fail(client: Client, **plan: object) -> None:
    response = await client.post("/_emulator/fail", json=plan)
    assert response.status == 200


async def test_refuse_drops_the_connection(client: Client, state: EmulatorState) -> None:
    await fail(client, mode="refuse")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/api/chat", json=chat_body())
    assert state.activity.counters.generations == 0
    ok = await client.post("/api/chat", json=chat_body(stream=False))
    assert ok.status == 200


@pytest.mark.parametrize("stream", [True, False])
async def test_500_answers_an_error_object(client: Client, stream: bool) -> None:
    await fail(client, mode="500", message="runner crashed")
    response = await client.post(
        "/api/generate", json={"model": "tiny", "prompt": "x", "stream": stream}
    )
    assert response.status == 500
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await response.json() == {"error": "runner crashed"}


async def test_500_mode_can_use_another_status(client: Client) -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"
    await fail(client, mode="500", status=503, message=busy)
    response = await client.post("/api/chat", json=chat_body())
    assert response.status == 503
    assert await response.json() == {"error": busy}


async def test_404_mode_names_the_model_as_sent(client: Client) -> None:
    await fail(client, mode="404")
    response = await client.post("/api/chat", json=chat_body(model="LLAMA3.2"))
    assert response.status == 404
    assert await response.json() == {"error": "model 'LLAMA3.2' not found"}


async def test_midstream_streams_tokens_then_an_error_line(
    client: Client, state: EmulatorState
) -> None:
    await fail(client, mode="midstream", after_tokens=2, message="lost the GPU")
    response = await client.post("/api/chat", json=chat_body("one two three four"))
    assert response.status == 200
    lines = parse_ndjson(await response.read())
    assert [line.get("message", {}).get("content") for line in lines[:2]] == ["Echo:", " one"]
    assert lines[2] == {"error": "lost the GPU"}
    assert len(lines) == 3  # no done chunk follows an error
    assert state.activity.counters.failed == 1
    assert state.activity.counters.completed == 0


async def test_midstream_without_streaming_answers_500(client: Client) -> None:
    await fail(client, mode="midstream", after_tokens=2)
    response = await client.post("/api/chat", json=chat_body(stream=False))
    assert response.status == 500
    assert await response.json() == {"error": "emulated failure"}


async def test_midstream_before_any_token_is_a_plain_http_error(client: Client) -> None:
    await fail(client, mode="midstream", after_tokens=0, message="early")
    response = await client.post("/api/chat", json=chat_body())
    assert response.status == 500
    assert await response.json() == {"error": "early"}


async def test_hang_sends_nothing_until_the_client_gives_up(
    client: Client, state: EmulatorState
) -> None:
    await fail(client, mode="hang")
    request = asyncio.create_task(client.post("/api/chat", json=chat_body()))
    await wait_for_state(state, lambda: state.activity.counters.active == 1)
    assert not request.done()
    request.cancel()
    await wait_for_state(state, lambda: state.activity.counters.cancelled == 1)
    counters = state.activity.counters
    assert (counters.active, counters.cancelled_midstream, counters.completed) == (0, 0, 0)


async def test_count_and_filters(client: Client) -> None:
    await fail(client, mode="500", count=2, model="tiny", endpoint="generate")
    tiny = {"model": "tiny", "prompt": "x", "stream": False}
    # Other models, other endpoints and load requests are untouched.
    assert (await client.post("/api/generate", json={**tiny, "model": "llama3.2"})).status == 200
    assert (
        await client.post("/api/chat", json=chat_body(model="tiny", stream=False))
    ).status == 200
    assert (await client.post("/api/generate", json={"model": "tiny"})).status == 200
    assert (await client.post("/api/generate", json=tiny)).status == 500
    assert (await client.post("/api/generate", json={**tiny, "model": "Tiny:latest"})).status == 500
    assert (await client.post("/api/generate", json=tiny)).status == 200


async def test_negative_count_fails_until_reset(client: Client) -> None:
    await fail(client, mode="404", count=-1)
    for _ in range(3):
        assert (await client.post("/api/chat", json=chat_body())).status == 404
    await client.post("/_emulator/reset")
    answer = await (await client.post("/api/chat", json=chat_body(stream=False))).json()
    assert answer["message"]["content"] == expected_reply("hello there")


@pytest.mark.parametrize(
    "plan",
    [{}, {"mode": "explode"}, {"mode": "500", "count": "2"}, {"mode": "hang", "endpoint": "embed"}],
)
async def test_bad_failure_plans_are_rejected(client: Client, plan: dict[str, object]) -> None:
    response = await client.post("/_emulator/fail", json=plan)
    assert response.status == 400
    assert "error" in await response.json()


async def test_failures_handed_out_are_counted_by_mode(
    client: Client, state: EmulatorState
) -> None:
    """A client retrying refused connections: each failed attempt is counted, so a test can
    tell how many requests it made (the scheduler's retries with backoff)."""
    await fail(client, mode="refuse", count=2)
    await fail(client, mode="500", status=503, count=1)
    for _ in range(2):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post("/api/chat", json=chat_body())
    busy = await client.post("/api/chat", json=chat_body())
    assert busy.status == 503
    ok = await client.post("/api/chat", json=chat_body(stream=False))
    assert ok.status == 200
    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["failures_injected"] == 3
    assert stats["failures_injected_by_mode"]["refuse"] == 2
    assert stats["failures_injected_by_mode"]["500"] == 1
    assert (stats["generations"], stats["completed"]) == (1, 1)
    # The server-side wait can count them too.
    waited = await client.get("/_emulator/wait", params={"failures_injected": "eq:3"})
    assert waited.status == 200
    # Dropping pending plans keeps the counts; a reset zeroes them.
    await client.delete("/_emulator/fail")
    assert state.stats()["failures_injected"] == 3
    await client.post("/_emulator/reset")
    assert state.stats()["failures_injected"] == 0
