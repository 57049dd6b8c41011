from __future__ import annotations

import asyncio

import pytest

from corral_emulator import EmulatorState
from corral_emulator.config import EmulatorConfig
from corral_emulator.testing import EmulatorTestClient as Client
from corral_emulator.testing import chat_body, parse_ndjson

COUNTERS = (
    "active",
    "max_active",
    "generations",
    "completed",
    "cancelled",
    "cancelled_midstream",
    "failed",
)


async def test_stats(client: Client) -> None:
    await client.post("/api/chat", json=chat_body(stream=False))
    stats = await (await client.get("/_emulator/stats")).json()
    assert {key: stats[key] for key in COUNTERS} == {
        "active": 0,
        "max_active": 1,
        "generations": 1,
        "completed": 1,
        "cancelled": 0,
        "cancelled_midstream": 0,
        "failed": 0,
    }
    assert stats["loaded"] == ["llama3.2:latest"]
    assert stats["loads"] == 1
    assert stats["held"] == 0


async def test_reset_zeroes_everything(client: Client, state: EmulatorState) -> None:
    await client.post("/api/chat", json=chat_body(stream=False))
    await client.post("/_emulator/fail", json={"mode": "500"})
    await client.post("/_emulator/hold")
    stats = await (await client.post("/_emulator/reset")).json()
    assert all(stats[key] == 0 for key in COUNTERS)
    assert stats["loaded"] == []
    assert stats["pending_failures"] == []
    assert stats["holding"] is False
    assert state.requests.all() == {}


async def test_config_changes_settings_at_runtime(client: Client, state: EmulatorState) -> None:
    changed = await client.post(
        "/_emulator/config", json={"token_delay_ms": 1, "load_ms": 2, "prompt_ms_per_token": 0.5}
    )
    assert changed.status == 200
    config = await (await client.get("/_emulator/config")).json()
    assert (config["token_delay_ms"], config["load_ms"], config["prompt_ms_per_token"]) == (
        1,
        2,
        0.5,
    )
    assert state.config.load_ms == 2


async def test_config_replaces_models(client: Client) -> None:
    await client.post("/api/chat", json=chat_body(stream=False))
    models = [{"name": "mini:1b", "context_length": 64, "family": "gemma"}]
    assert (await client.post("/_emulator/config", json={"models": models})).status == 200
    tags = await (await client.get("/api/tags")).json()
    assert [model["name"] for model in tags["models"]] == ["mini:1b"]
    shown = await (await client.post("/api/show", json={"model": "MINI:1b"})).json()
    assert shown["model_info"]["gemma.context_length"] == 64
    assert (await client.post("/api/chat", json=chat_body())).status == 404
    # The model that left the catalogue was unloaded.
    assert await (await client.get("/api/ps")).json() == {"models": []}


@pytest.mark.parametrize(
    "body",
    [
        {"token_delay_ms": -1},
        {"load_ms": "fast"},
        {"bogus": 1},
        {"models": [{"context_length": 1}]},
    ],
)
async def test_bad_config_is_rejected_atomically(
    client: Client, state: EmulatorState, body: dict[str, object]
) -> None:
    response = await client.post("/_emulator/config", json={"prompt_ms_per_token": 9, **body})
    assert response.status == 400
    assert state.config.prompt_ms_per_token == 0


async def test_recorded_requests(client: Client) -> None:
    body = chat_body(stream=False, options={"session_id": "abc"})
    await client.post("/api/chat", json=body)
    await client.post("/api/generate", json={"model": "tiny", "prompt": "p", "stream": False})
    chat = await (await client.get("/_emulator/requests", params={"endpoint": "chat"})).json()
    assert chat == {"endpoint": "chat", "requests": [body]}
    everything = await (await client.get("/_emulator/requests")).json()
    assert set(everything["requests"]) == {"chat", "generate"}
    none = await (await client.get("/_emulator/requests", params={"endpoint": "show"})).json()
    assert none["requests"] == []


async def test_hold_release_and_wait_over_http(client: Client) -> None:
    await client.post("/_emulator/hold")
    request = asyncio.create_task(client.post("/api/chat", json=chat_body()))
    held = await client.get("/_emulator/wait", params={"held": "1", "active": "eq:1"})
    assert held.status == 200
    assert (await held.json())["held"] == 1
    await client.post("/_emulator/release")
    response = await request
    assert parse_ndjson(await response.read())[-1]["done"] is True
    done = await client.get("/_emulator/wait", params={"completed": "1", "active": "le:0"})
    assert (await done.json())["completed"] == 1


async def test_wait_times_out_with_408(client: Client) -> None:
    response = await client.get("/_emulator/wait", params={"completed": "1", "timeout": "0.01"})
    assert response.status == 408
    assert (await response.json())["stats"]["completed"] == 0


@pytest.mark.parametrize("params", [{"nonsense": "1"}, {"active": "gt:1"}, {"active": "x"}])
async def test_wait_rejects_bad_conditions(client: Client, params: dict[str, str]) -> None:
    response = await client.get("/_emulator/wait", params=params)
    assert response.status == 400


async def test_control_routes_follow_gin_fallbacks(client: Client) -> None:
    assert (await client.post("/_emulator/stats")).status == 405
    assert (await client.get("/_emulator/nothing")).status == 404


def test_config_defaults() -> None:
    config = EmulatorConfig()
    assert (config.host, config.port, config.record_limit) == ("127.0.0.1", 11434, 50)
