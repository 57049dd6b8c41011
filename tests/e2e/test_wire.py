"""Corral's wire behaviour at the edge, byte by byte, with a plain HTTP client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_emulator import EmulatorControl, expected_reply, tokenize
from corral_emulator.structured import formatted_reply
from tests.fixtures import Emulator, start_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}]}


async def post(
    cluster: Cluster, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{cluster.gateway_url}{path}", data=data, headers=headers) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


def lines(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    parts = raw.split(b"\n")[:-1]
    assert all(parts), "NDJSON must have no blank lines"
    return [orjson.loads(p) for p in parts]


async def test_stream_defaults_to_true(cluster: Cluster, emu: EmulatorControl) -> None:
    status, headers, raw = await post(cluster, "/api/chat", CHAT)
    assert status == 200
    assert headers["Content-Type"].startswith("application/x-ndjson")
    chunks = lines(raw)
    final = chunks[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    for field in ("total_duration", "load_duration", "prompt_eval_count", "eval_count"):
        assert isinstance(final[field], int)
    assert final["request_id"] == headers["X-Request-Id"]
    assert final["queue_info"] == {
        "wait_time_ms": final["queue_info"]["wait_time_ms"],
        "position": 0,
    }
    assert final["context_info"] == {
        "truncated": False,
        "messages_used": 1,
        "tokens_used": final["prompt_eval_count"],
    }
    text = "".join(c["message"]["content"] for c in chunks)
    assert text == expected_reply("hello there")
    # Every chunk is one an Ollama client parses: model, created_at, message, done.
    for chunk in chunks:
        assert chunk["model"] == "llama3.2"
        assert chunk["created_at"].endswith("Z")
        assert chunk["message"]["role"] == "assistant"


async def test_non_stream_answer(cluster: Cluster, emu: EmulatorControl) -> None:
    status, headers, raw = await post(
        cluster, "/api/generate", {"model": "llama3.2", "prompt": "a b c", "stream": False}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    body = orjson.loads(raw)
    assert body["response"] == expected_reply("a b c")
    assert body["done"] is True
    assert body["context"]
    assert body["queue_info"]["position"] == 0


async def test_request_id_in_and_out(cluster: Cluster, emu: EmulatorControl) -> None:
    _, headers, raw = await post(
        cluster, "/api/chat", {**CHAT, "stream": False}, {"X-Request-Id": "my-req-1"}
    )
    assert headers["X-Request-Id"] == "my-req-1"
    assert orjson.loads(raw)["request_id"] == "my-req-1"
    _, headers, raw = await post(
        cluster, "/api/chat", {**CHAT, "stream": False, "request_id": "body-id"}
    )
    assert orjson.loads(raw)["request_id"] == "body-id"
    status, _, raw = await post(cluster, "/api/chat", {**CHAT, "request_id": "has.dots"})
    assert status == 400
    assert "request_id" in orjson.loads(raw)["error"]


async def test_extension_fields_never_reach_the_backend(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    body = {
        **CHAT,
        "session_id": "s1",
        "request_id": "r1",
        "options": {"session_id": "s1", "seed": 7},
        "format": "json",
        "keep_alive": "10m",
        "think": False,
        "tools": [],
    }
    status, headers, _ = await post(cluster, "/api/chat", {**body, "stream": False})
    assert status == 200
    assert headers["X-Session-Id"] == "s1"
    sent = (await emu.requests("chat"))[-1]
    assert "session_id" not in sent
    assert "request_id" not in sent
    assert sent["options"] == {"seed": 7}
    # Everything Ollama understands passes through untouched.
    for field in ("model", "messages", "format", "keep_alive", "think", "tools"):
        assert sent[field] == body[field]


async def test_generate_fields_pass_through(cluster: Cluster, emu: EmulatorControl) -> None:
    body = {
        "model": "llama3.2",
        "prompt": "def add(a, b):",
        "suffix": "    return result",
        "system": "You write Python.",
        "images": ["aGVsbG8="],
        "format": {"type": "object"},
        "keep_alive": 300,
        "options": {"num_predict": 2, "temperature": 0},
        "session_id": "s9",
    }
    status, _, raw = await post(cluster, "/api/generate", {**body, "stream": False})
    assert status == 200
    # The emulator honours `format` as Ollama does: its answer is an instance of the schema
    # (an object without properties, `{}`), cut to num_predict tokens.
    formatted = formatted_reply("def add(a, b):", body["format"])
    assert formatted is not None
    assert orjson.loads(raw)["response"] == "".join(tokenize(formatted)[:2])
    sent = (await emu.requests("generate"))[-1]
    assert "session_id" not in sent
    for field in (
        "model",
        "prompt",
        "suffix",
        "system",
        "images",
        "format",
        "keep_alive",
        "options",
    ):
        assert sent[field] == body[field], field


async def test_queue_chunks_while_waiting_and_opt_out(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.hold()
    first = asyncio.create_task(post(cluster, "/api/chat", {**CHAT, "stream": False}))
    await emu.wait(held=1)
    waiting = asyncio.create_task(post(cluster, "/api/chat", CHAT))
    quiet = asyncio.create_task(post(cluster, "/api/chat", CHAT, {"X-Queue-Progress": "0"}))
    # Both are queued behind the held generation once the scheduler has admitted them; the
    # first queue chunk is written as soon as the position is known.
    await wait_until_queued(cluster, 2)
    await emu.release()
    _, _, waiting_raw = await waiting
    _, _, quiet_raw = await quiet
    await first
    waiting_chunks = lines(waiting_raw)
    infos = [c["queue_info"] for c in waiting_chunks if "queue_info" in c and not c["done"]]
    assert infos[0]["position"] >= 1, waiting_raw.decode()
    assert infos[-1]["position"] == 0
    for chunk in waiting_chunks[: len(infos)]:
        assert chunk["message"] == {"role": "assistant", "content": ""}
    quiet_chunks = lines(quiet_raw)
    assert not any("queue_info" in c for c in quiet_chunks if not c["done"])
    # It was still told where it started, for the record in its final chunk.
    assert quiet_chunks[-1]["queue_info"]["position"] >= 1


def masked(raw: bytes) -> list[bytes]:
    """A stream's lines with the times blanked (they differ from one run to the next)."""
    return [re.sub(rb'"created_at":"[^"]*"', b'"created_at":""', line) for line in raw.split(b"\n")]


async def test_a_stream_that_never_waited_is_the_backends_own(
    cluster: Cluster, emu: EmulatorControl, emulator: Emulator
) -> None:
    """Nothing was queued, so nothing is added: no queue chunk, not even "position 0"; every
    chunk before the final one is the backend's, byte for byte."""
    status, headers, raw = await post(cluster, "/api/chat", CHAT)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{emulator.url}/api/chat", data=orjson.dumps(CHAT)) as direct,
    ):
        backend = await direct.read()
    assert status == 200
    assert not any("queue_info" in c for c in lines(raw)[:-1]), raw.decode()
    ours, theirs = masked(raw), masked(backend)
    assert len(ours) == len(theirs)
    assert ours[:-2] == theirs[:-2]
    # The final chunk is the backend's with Corral's fields added.
    final = orjson.loads(ours[-2])
    assert {k: v for k, v in final.items() if k not in DURATIONS} == {
        **{k: v for k, v in orjson.loads(theirs[-2]).items() if k not in DURATIONS},
        "request_id": headers["X-Request-Id"],
        "queue_info": {"wait_time_ms": final["queue_info"]["wait_time_ms"], "position": 0},
        "context_info": final["context_info"],
    }
    # The headers say the same: it ran at once.
    assert headers["X-Queue-Position"] == "0"
    assert headers["X-Estimated-Wait-Ms"] == "0"


DURATIONS = {"total_duration", "load_duration", "prompt_eval_duration", "eval_duration"}


LOADS = [
    # (path, body, done_reason): Ollama's idiom, no messages or prompt; keep_alive 0 unloads.
    ("/api/chat", {"model": "llama3.2"}, "load"),
    ("/api/chat", {"model": "llama3.2", "keep_alive": 0}, "unload"),
    ("/api/generate", {"model": "llama3.2"}, "load"),
    ("/api/generate", {"model": "llama3.2", "keep_alive": 0}, "unload"),
    ("/api/chat", {"model": "llama3.2", "messages": [], "stream": True}, "load"),
    ("/api/generate", {"model": "llama3.2", "prompt": "", "keep_alive": "0"}, "unload"),
]


@pytest.mark.parametrize(("path", "body", "reason"), LOADS)
async def test_load_and_unload_answer_one_json_object(
    cluster: Cluster, emu: EmulatorControl, path: str, body: dict[str, Any], reason: str
) -> None:
    """As Ollama's ChatHandler and GenerateHandler (`c.JSON`): one object, whatever `stream`
    says (it defaults to true)."""
    status, headers, raw = await post(cluster, path, body)
    assert status == 200, raw
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    answer = orjson.loads(raw)  # one JSON document, not NDJSON lines
    assert isinstance(answer, dict)
    assert answer["model"] == "llama3.2"
    assert answer["created_at"].endswith("Z")
    assert answer["done"] is True
    assert answer["done_reason"] == reason
    if path == "/api/chat":
        assert answer["message"] == {"role": "assistant", "content": ""}
    else:
        assert answer["response"] == ""
    assert answer["request_id"] == headers["X-Request-Id"]
    assert answer["context_info"]["messages_used"] == 0
    # It went to the backend as the idiom, through the lane.
    assert (await emu.stats())["max_active"] <= 1


async def test_a_request_id_still_in_flight_is_a_409(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    """Ollama ignores X-Request-Id, so a client retrying after its own timeout with the same one
    must be told plainly what is wrong, in the shape of the API it called."""
    await emu.hold()
    reused = {"X-Request-Id": "reused-1"}
    first = asyncio.create_task(post(cluster, "/api/chat", {**CHAT, "stream": False}, reused))
    await emu.wait(held=1)
    text = "request id 'reused-1' is already in flight; use a new X-Request-Id"
    try:
        status, headers, raw = await post(cluster, "/api/chat", CHAT, reused)
        assert (status, orjson.loads(raw)) == (409, {"error": text})
        assert headers["X-Request-Id"] == "reused-1"
        status, _, raw = await post(cluster, "/api/generate", {"model": "llama3.2"}, reused)
        assert (status, orjson.loads(raw)) == (409, {"error": text})
        v1 = {"model": "llama3.2", "messages": CHAT["messages"]}
        status, _, raw = await post(cluster, "/v1/chat/completions", v1, reused)
        assert status == 409
        assert orjson.loads(raw) == {
            "error": {
                "message": text,
                "type": "api_error",
                "param": None,
                "code": "request_in_flight",
            }
        }
        status, _, raw = await post(cluster, "/admin/models/llama3.2/load", b"", reused)
        assert status == 409
        assert orjson.loads(raw) == {
            "error": {"type": "request_in_flight", "message": text, "details": {}}
        }
    finally:
        await emu.release()
    status, _, raw = await first
    # The first request was never disturbed, and once it is answered the id is free again.
    assert status == 200
    assert orjson.loads(raw)["message"]["content"] == expected_reply("hello there")
    status, _, _ = await post(cluster, "/api/chat", {**CHAT, "stream": False}, reused)
    assert status == 200


async def wait_until_queued(cluster: Cluster, count: int) -> None:
    """Until the scheduler reports `count` jobs waiting (its status reaches /health)."""

    async def queued() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{cluster.gateway_url}/health") as response,
        ):
            health = await response.json()
        return bool(health["queue"]["waiting"] >= count)

    await eventually(queued, what=f"{count} jobs waiting")


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"{not json", 400, "invalid character 'n' looking for beginning of value"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        (
            "/api/chat",
            {"model": "m", "stream": "yes"},
            400,
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            "/api/chat",
            b'{"model":"llama3.2","messages":[{"role":"user","content":"\\udc00"}]}',
            400,
            None,
        ),
        (
            "/api/chat",
            {**CHAT, "session_id": 5},
            400,
            "Corral's fields session_id, request_id and priority must be strings",
        ),
        (
            "/api/chat",
            {**CHAT, "priority": "urgent"},
            400,
            "invalid priority 'urgent': use one of interactive, normal, batch",
        ),
        (
            "/api/chat",
            {**CHAT, "options": {"queue_timeout": -1}},
            400,
            "invalid queue timeout -1: give a positive number of seconds",
        ),
    ],
)
async def test_bad_input(
    cluster: Cluster, emu: EmulatorControl, path: str, body: Any, status: int, error: str | None
) -> None:
    got, headers, raw = await post(cluster, path, body)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    message = orjson.loads(raw)["error"]
    assert message == error if error is not None else "surrogate" in message
    assert (await emu.stats())["generations"] == 0, "a bad request must never reach the backend"


async def test_huge_body_is_refused(cluster: Cluster, emu: EmulatorControl) -> None:
    content = "x" * (65 * 1024 * 1024)
    status, _, raw = await post(
        cluster,
        "/api/chat",
        {"model": "llama3.2", "messages": [{"role": "user", "content": content}]},
    )
    assert status == 413
    assert "too large" in orjson.loads(raw)["error"]


@pytest.fixture
def dead_backend(
    fresh_broker: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, str]]:
    dead = f"http://127.0.0.1:{free_port()}"
    cluster = start_cluster(fresh_broker(), dead, tmp_path_factory.mktemp("dead-backend"))
    yield cluster, dead
    cluster.stop_all()


async def test_backend_down_is_a_clear_503(dead_backend: tuple[Cluster, str]) -> None:
    cluster, dead = dead_backend
    status, _, raw = await post(cluster, "/api/chat", {**CHAT, "stream": False})
    assert status == 503
    assert orjson.loads(raw) == {
        "error": f"Cannot connect to Ollama server. Please ensure Ollama is running on {dead}"
    }
    status, _, raw = await post(cluster, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert status == 503


async def test_model_endpoints_say_the_backend_is_down(dead_backend: tuple[Cluster, str]) -> None:
    cluster, dead = dead_backend
    cluster.start_health_service("corral_model_manager", "model-manager")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.gateway_url}/api/tags") as response:
            assert response.status == 503
            assert dead in (await response.json())["error"]
        url = f"{cluster.gateway_url}/api/providers/ollama/models"
        async with session.get(url) as response:
            error = (await response.json())["error"]
            assert (response.status, error["type"]) == (503, "ollama_connection_error")
            assert error["details"]["ollama_host"] == dead
        url = f"{cluster.gateway_url}/api/providers/ollama/pull"
        async with session.post(url, json={"model": "llama3.2"}) as response:
            error = (await response.json())["error"]
            assert (response.status, error["type"]) == (503, "ollama_connection_error")


async def test_root_version_and_unknown_routes(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.gateway_url}/") as response:
            assert (response.status, await response.text()) == (200, "Ollama is running")
        async with session.head(f"{cluster.gateway_url}/") as response:
            assert response.status == 200
        # HEAD where Ollama registers one, 405 where it registers GET only.
        async with session.head(f"{cluster.gateway_url}/api/tags") as response:
            assert response.status == 200
        for path in ("/api/ps", "/v1/models", "/v1/models/llama3.2"):
            async with session.head(f"{cluster.gateway_url}{path}") as response:
                assert response.status == 405, path
        async with session.get(f"{cluster.gateway_url}/api/version") as response:
            assert (await response.json())["version"] == "0.12.6"  # the backend's, not ours
        async with session.get(f"{cluster.gateway_url}/api/nope") as response:
            assert (response.status, await response.text()) == (404, "404 page not found")
        async with session.get(f"{cluster.gateway_url}/api/chat") as response:
            assert (response.status, await response.text()) == (405, "405 method not allowed")


async def test_health_reports_broker_backend_and_queue(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{cluster.gateway_url}/health") as response:
            health = await response.json()
        assert response.status == 200
        async with session.get(f"{cluster.gateway_url}/metrics") as response:
            metrics = await response.text()
    assert health["status"] == "healthy"
    assert health["broker"] == {"connected": True}
    assert health["ollama"]["connected"] is True
    assert health["ollama"]["version"] == "0.12.6"
    assert set(health["queue"]) >= {"depth", "average_wait_ms", "processing_rate"}
    assert "corral_requests_total" in metrics


async def test_one_clients_huge_num_ctx_is_held_to_the_models_context_length(
    cluster: Cluster, emu: EmulatorControl
) -> None:
    """Ollama clamps num_ctx to the model's trained context (llm/server.go); the load guard
    keeps no more, so one client's absurd num_ctx is not what everyone after it gets. A
    num_ctx of the wrong type is Ollama's 500, before the lane."""
    model = "guard-probe"  # a copy of llama3.2 (context 4096): the guard's state is its own
    async with aiohttp.ClientSession() as session:
        copy = {"source": "llama3.2", "destination": model}
        async with session.post(f"{cluster.gateway_url}/api/copy", json=copy) as response:
            assert response.status == 200, await response.text()
        url = f"{cluster.gateway_url}/api/chat"
        hi = [{"role": "user", "content": "hi"}]
        for options in ({"num_ctx": 10**12}, {}, {"num_ctx": 8192}):
            body = {"model": model, "messages": hi, "stream": False, "options": options}
            async with session.post(url, json=body) as response:
                assert response.status == 200, (options, await response.text())
        wrong = {"model": model, "messages": hi, "options": {"num_ctx": "8192"}}
        async with session.post(url, json=wrong) as response:
            answer = (response.status, (await response.json())["error"])
            assert answer == (500, 'option "num_ctx" must be of type integer')
    sent = [r for r in await emu.requests("chat") if r.get("model") == model]
    contexts = [r.get("options", {}).get("num_ctx") for r in sent]
    # Clamped, and never more than the model holds after it (None: the backend's default).
    assert len(contexts) == 3 and contexts[0] == 4096, contexts
    assert all(n is None or n <= 4096 for n in contexts), contexts
