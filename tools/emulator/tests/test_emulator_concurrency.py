from __future__ import annotations

import asyncio

from corral_emulator import EmulatorState, expected_reply
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, parse_ndjson, wait_for_state


async def chat_text(client: Client, content: str, model: str = "llama3.2") -> str:
    response = await client.post("/api/chat", json=chat_body(content, model=model))
    lines = parse_ndjson(await response.read())
    assert lines[-1]["done"] is True
    return "".join(line["message"]["content"] for line in lines)


async def test_overlapping_generations_are_recorded(client: Client, state: EmulatorState) -> None:
    state.gate.hold()
    first = asyncio.create_task(chat_text(client, "first"))
    second = asyncio.create_task(chat_text(client, "second", model="tiny"))
    await wait_for_state(state, lambda: state.gate.waiting == 2)
    assert state.activity.counters.active == 2
    state.gate.release()
    assert list(await asyncio.gather(first, second)) == [
        expected_reply("first"),
        expected_reply("second"),
    ]

    counters = state.activity.counters
    assert (counters.max_active, counters.active, counters.generations) == (2, 0, 2)
    assert counters.completed == 2
    assert dict(counters.max_active_by_model) == {"llama3.2:latest": 1, "tiny:latest": 1}


async def test_sequential_generations_never_overlap(client: Client, state: EmulatorState) -> None:
    for content in ("one", "two", "three"):
        assert await chat_text(client, content) == expected_reply(content)
    counters = state.activity.counters
    assert (counters.max_active, counters.generations, counters.completed) == (1, 3, 3)


async def test_concurrent_first_use_shares_one_load(client: Client, state: EmulatorState) -> None:
    state.config.load_ms = 50
    await asyncio.gather(*(chat_text(client, str(n)) for n in range(3)))
    assert state.runners.loads == 1
    assert state.activity.counters.completed == 3


async def test_client_disconnect_midstream_is_counted(client: Client, state: EmulatorState) -> None:
    state.config.token_delay_ms = 20
    response = await client.post("/api/chat", json=chat_body("many words " * 50))
    first_line = await response.content.readline()
    assert b'"done":false' in first_line
    response.close()
    await wait_for_state(state, lambda: state.activity.counters.cancelled == 1)
    counters = state.activity.counters
    assert (counters.cancelled_midstream, counters.completed, counters.active) == (1, 0, 0)
    # The runner was released, so keep_alive applies as after any request.
    assert state.runners.loaded()[0].in_flight == 0


async def test_disconnect_while_held_is_not_midstream(client: Client, state: EmulatorState) -> None:
    state.gate.hold()
    request = asyncio.create_task(client.post("/api/chat", json=chat_body(stream=False)))
    await wait_for_state(state, lambda: state.gate.waiting == 1)
    request.cancel()
    await wait_for_state(state, lambda: state.activity.counters.cancelled == 1)
    assert state.activity.counters.cancelled_midstream == 0
    assert state.gate.waiting == 0


async def test_unload_requests_are_not_generations(client: Client, state: EmulatorState) -> None:
    await client.post("/api/chat", json={"model": "llama3.2", "keep_alive": 0})
    assert state.activity.counters.generations == 0
    await client.post("/api/chat", json={"model": "llama3.2"})
    assert state.activity.counters.generations == 1
