from __future__ import annotations

import asyncio

import pytest

from corral_emulator import EmulatorState, expected_reply
from corral_emulator.activity import OperationKind
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


async def test_loads_and_unloads_are_operations_not_generations(
    client: Client, state: EmulatorState
) -> None:
    await client.post("/api/chat", json={"model": "llama3.2", "keep_alive": 0})
    await client.post("/api/chat", json={"model": "llama3.2"})
    counters = state.activity.counters
    assert (counters.generations, counters.completed) == (0, 0)
    assert counters.operations == 2
    stats = state.stats()
    assert (stats["load_requests"], stats["unload_requests"]) == (1, 1)
    assert stats["operations_by_kind"] == {"generation": 0, "load": 1, "unload": 1, "embed": 0}


UNLOAD = {"model": "llama3.2", "keep_alive": 0}
LOAD = {"model": "llama3.2"}
EMBED = {"model": "nomic-embed-text", "input": "x"}


@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/api/chat", UNLOAD, "unload"),
        ("/api/generate", LOAD, "load"),
        ("/api/embeddings", {"model": "tiny"}, "load"),
    ],
)
async def test_work_beside_a_generation_shows_as_overlap(
    client: Client, state: EmulatorState, path: str, body: dict[str, object], kind: str
) -> None:
    state.gate.hold()
    chat = asyncio.create_task(chat_text(client, "running"))
    await wait_for_state(state, lambda: state.gate.waiting == 1)
    # Loads and unloads are never held: they overlap the held generation.
    assert (await client.post(path, json=body)).status == 200
    counters = state.activity.counters
    assert counters.max_active == 2
    assert counters.operations_by_kind[OperationKind(kind)] == 1
    state.gate.release()
    assert await chat == expected_reply("running")
    assert (counters.active, counters.generations, counters.completed) == (0, 1, 1)


async def test_embed_beside_a_generation_shows_as_overlap(
    client: Client, state: EmulatorState
) -> None:
    state.gate.hold()
    chat = asyncio.create_task(chat_text(client, "running"))
    embed = asyncio.create_task(client.post("/api/embed", json=EMBED))
    # Both wait at the gate, so both are active at once.
    await wait_for_state(
        state, lambda: state.gate.waiting == 1 and state.stats()["embeds_held"] == 1
    )
    assert state.activity.counters.max_active == 2
    state.gate.release()
    assert await chat == expected_reply("running")
    assert (await embed).status == 200
    assert state.activity.counters.active == 0


async def test_one_thing_at_a_time_keeps_max_active_at_1(
    client: Client, state: EmulatorState
) -> None:
    assert await chat_text(client, "one") == expected_reply("one")
    for path, body in [("/api/chat", UNLOAD), ("/api/chat", LOAD), ("/api/embed", EMBED)]:
        assert (await client.post(path, json=body)).status == 200
    stats = state.stats()
    assert (stats["max_active"], stats["active"], stats["operations"]) == (1, 0, 4)
    assert stats["operations_by_kind"] == {"generation": 1, "load": 1, "unload": 1, "embed": 1}
    assert (stats["load_requests"], stats["unload_requests"], stats["embeds"]) == (1, 1, 1)
    assert (stats["generations"], stats["completed"]) == (1, 1)


async def test_an_unload_drops_the_model_from_ps(client: Client, state: EmulatorState) -> None:
    await client.post("/api/chat", json=LOAD)
    assert [m["name"] for m in (await (await client.get("/api/ps")).json())["models"]] == [
        "llama3.2:latest"
    ]
    answer = await (await client.post("/api/chat", json=UNLOAD)).json()
    assert answer["done_reason"] == "unload"
    assert await (await client.get("/api/ps")).json() == {"models": []}
    assert state.runners.unloads == 1
