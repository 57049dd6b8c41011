"""The request timeline (`/_emulator/timeline`): each generation's start and response end."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from corral_emulator import EmulatorControl, EmulatorState, reply_tokens, running_emulator
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, parse_ndjson, wait_for_state
from corral_emulator.timeline import idle_gaps_ns


async def timeline(client: Client) -> list[dict[str, Any]]:
    answer = await (await client.get("/_emulator/timeline")).json()
    entries: list[dict[str, Any]] = answer["requests"]
    return entries


async def settled(client: Client, state: EmulatorState) -> list[dict[str, Any]]:
    await wait_for_state(state, lambda: state.timeline.open == 0)
    return await timeline(client)


async def test_a_streamed_chat_has_its_start_and_end(client: Client, state: EmulatorState) -> None:
    before_ns, before_wall_ns = time.monotonic_ns(), time.time_ns()
    response = await client.post("/api/chat", json=chat_body("hello there"))
    parse_ndjson(await response.read())
    [entry] = await settled(client, state)
    assert entry["endpoint"] == "chat"
    assert entry["model"] == "llama3.2:latest"
    assert entry["outcome"] == "completed"
    assert entry["tokens"] == len(reply_tokens("hello there"))
    assert before_ns <= entry["start_ns"] <= entry["end_ns"] <= time.monotonic_ns()
    assert before_wall_ns <= entry["start_wall_ns"] <= entry["end_wall_ns"] <= time.time_ns()


async def test_unstreamed_generate_and_v1_requests_are_on_it(
    client: Client, state: EmulatorState
) -> None:
    await client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    await client.post(
        "/v1/chat/completions",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "y"}]},
    )
    entries = await settled(client, state)
    assert [(e["endpoint"], e["model"], e["outcome"]) for e in entries] == [
        ("generate", "tiny:latest", "completed"),
        ("v1_chat", "llama3.2:latest", "completed"),
    ]
    assert all(e["end_ns"] >= e["start_ns"] for e in entries)


async def test_loads_and_refused_requests_are_not_generations(
    client: Client, state: EmulatorState
) -> None:
    await client.post("/api/chat", json={"model": "llama3.2"})
    await client.post("/_emulator/fail", json={"mode": "500"})
    await client.post("/api/chat", json=chat_body(stream=False))
    assert await timeline(client) == []


async def test_serial_requests_leave_gaps_in_start_order(
    client: Client, state: EmulatorState
) -> None:
    for content in ("one", "two", "three"):
        await (await client.post("/api/chat", json=chat_body(content))).read()
    entries = await settled(client, state)
    assert [e["tokens"] for e in entries] == [len(reply_tokens(c)) for c in ("one", "two", "three")]
    for earlier, later in itertools.pairwise(entries):
        assert later["start_ns"] >= earlier["end_ns"]
    gaps = idle_gaps_ns(entries)
    assert gaps == [b["start_ns"] - a["end_ns"] for a, b in itertools.pairwise(entries)]


async def test_a_disconnect_ends_the_entry_as_cancelled(
    client: Client, state: EmulatorState
) -> None:
    state.gate.hold()
    request = asyncio.create_task(client.post("/api/chat", json=chat_body()))
    await wait_for_state(state, lambda: state.gate.waiting == 1)
    [running] = await timeline(client)
    assert (running["end_ns"], running["outcome"]) == (None, None)
    assert state.timeline.open == 1
    request.cancel()
    [entry] = await settled(client, state)
    assert (entry["outcome"], entry["tokens"]) == ("cancelled", 0)
    assert entry["end_ns"] >= entry["start_ns"]


async def test_a_failure_midstream_ends_it_failed(client: Client, state: EmulatorState) -> None:
    await client.post("/_emulator/fail", json={"mode": "midstream", "after_tokens": 2})
    await (await client.post("/api/chat", json=chat_body("many words here"))).read()
    [entry] = await settled(client, state)
    assert (entry["outcome"], entry["tokens"]) == ("failed", 2)


async def test_reset_clears_it(client: Client, state: EmulatorState) -> None:
    await (await client.post("/api/chat", json=chat_body())).read()
    await settled(client, state)
    await client.post("/_emulator/reset")
    assert await timeline(client) == []
    stats = await (await client.get("/_emulator/stats")).json()
    assert stats["timeline_open"] == 0


async def test_a_request_running_across_a_reset_does_not_unbalance_the_count(
    client: Client, state: EmulatorState
) -> None:
    state.gate.hold()
    request = asyncio.create_task(client.post("/api/chat", json=chat_body()))
    await wait_for_state(state, lambda: state.gate.waiting == 1)
    state.timeline.clear()
    request.cancel()
    await wait_for_state(state, lambda: state.gate.waiting == 0)
    assert state.timeline.open == 0
    assert await timeline(client) == []


def entry(start: int, end: int | None) -> dict[str, Any]:
    return {"start_ns": start, "end_ns": end}


def test_idle_gaps_skip_overlaps_and_running_requests() -> None:
    assert idle_gaps_ns([]) == []
    assert idle_gaps_ns([entry(30, 40), entry(0, 10), entry(12, 20)]) == [2, 10]
    # The second overlaps the first: no gap there; the third waits for the later end.
    assert idle_gaps_ns([entry(0, 10), entry(5, 20), entry(21, 30)]) == [1]
    # Nothing after a request that never ended is idle time.
    assert idle_gaps_ns([entry(0, 10), entry(11, None), entry(50, 60)]) == [1]


async def test_the_control_client_waits_for_the_last_end() -> None:
    async with running_emulator() as emulator, EmulatorControl(emulator.url) as control:
        async with aiohttp.ClientSession() as session:
            for content in ("a", "b"):
                async with session.post(
                    f"{emulator.url}/api/chat", json=chat_body(content)
                ) as response:
                    await response.read()
        entries = await control.timeline()
        assert [e["outcome"] for e in entries] == ["completed", "completed"]
        assert len(idle_gaps_ns(entries)) == 1
        assert (await control.stats())["timeline_open"] == 0
