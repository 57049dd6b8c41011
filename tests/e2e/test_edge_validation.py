"""Every input is judged at the edge: ids on every route, nesting depth, wrong shapes,
numbers no Go type holds, paging bounds, echoed names clipped; the answer is a 400 in the
route's own shape at once, and the lane carries on serving everyone else."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from corral_common.ids import CLIENT_ID_MAX_CHARS
from corral_common.jsonutil import MAX_DEPTH
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}], "stream": False}
LONG_ID = "r" * 215  # the reproduction: a routing key past 255 bytes


async def call(
    cluster: Cluster,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(
            method, f"{cluster.gateway_url}{path}", data=data, headers=headers
        ) as response,
    ):
        payload = await response.read()
        try:
            return response.status, orjson.loads(payload)
        except orjson.JSONDecodeError:
            return response.status, payload


async def assert_lane_serves(cluster: Cluster) -> None:
    status, body = await call(cluster, "POST", "/api/chat", CHAT)
    assert status == 200, body
    assert body["done"] is True


def corral_invalid(body: Any) -> str:
    assert body["error"]["type"] == "invalid_request", body
    return str(body["error"]["message"])


@pytest.mark.parametrize("action", ["load", "unload"])
async def test_admin_model_operations_refuse_an_overlong_request_id(
    cluster: Cluster, emu: EmulatorControl, action: str
) -> None:
    status, body = await call(
        cluster, "POST", f"/admin/models/llama3.2/{action}", headers={"X-Request-Id": LONG_ID}
    )
    assert status == 400
    message = corral_invalid(body)
    assert "request_id" in message
    assert LONG_ID not in message  # clipped
    await assert_lane_serves(cluster)


BAD_ID = "x" * (CLIENT_ID_MAX_CHARS + 1)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        ("POST", "/api/chat", CHAT, {"X-Request-Id": BAD_ID}),
        ("POST", "/api/chat", {**CHAT, "request_id": "a.b"}, None),
        ("POST", "/api/chat", {**CHAT, "session_id": "has space"}, None),
        ("POST", "/api/chat", CHAT, {"X-Session-Id": BAD_ID}),
        ("POST", "/api/chat", CHAT, {"X-Client-Id": BAD_ID}),
        ("POST", "/api/generate", {"model": "llama3.2", "prompt": "hi"}, {"X-Request-Id": "a.b"}),
        ("POST", "/api/embed", {"model": "llama3.2", "input": "hi"}, {"X-Request-Id": BAD_ID}),
        ("POST", "/api/pull", {"model": "tiny"}, {"X-Request-Id": BAD_ID}),
        ("POST", "/api/create", {"model": "x", "from": "tiny"}, {"X-Request-Id": BAD_ID}),
    ],
)
async def test_ollama_routes_refuse_bad_ids_in_ollama_shape(
    cluster: Cluster,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str] | None,
) -> None:
    status, answer = await call(cluster, method, path, body, headers=headers)
    assert status == 400, answer
    assert isinstance(answer["error"], str)
    assert answer["error"].startswith("invalid ")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/api/providers/ollama/pull", {"X-Request-Id": BAD_ID}),
        ("GET", f"/queue/{BAD_ID}", None),
        ("DELETE", f"/admin/queue/{LONG_ID}", None),
        ("GET", f"/sessions/{BAD_ID}/history", None),
        ("DELETE", "/sessions/a.b", None),
    ],
)
async def test_corral_routes_refuse_bad_ids_in_corral_shape(
    cluster: Cluster, method: str, path: str, headers: dict[str, str] | None
) -> None:
    body = {"model": "tiny"} if method == "POST" else None
    status, answer = await call(cluster, method, path, body, headers=headers)
    assert status == 400, answer
    corral_invalid(answer)


async def test_deep_nesting_is_refused_at_once(cluster: Cluster, emu: EmulatorControl) -> None:
    for depth in (MAX_DEPTH + 1, 254, 2000):
        nested = b"[" * depth + b"]" * depth
        raw = b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],"options":{"x":'
        status, answer = await call(cluster, "POST", "/api/chat", raw=raw + nested + b"}}")
        assert status == 400, answer
        assert answer["error"].startswith("exceeded max depth")
    status, answer = await call(
        cluster, "PATCH", "/sessions/s1", raw=b'{"title":' + b"[" * 300 + b"]" * 300 + b"}"
    )
    assert status == 400
    corral_invalid(answer)
    await assert_lane_serves(cluster)
    assert not (await emu.requests("chat"))[:-1]  # only the healthy chat reached the backend


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"model":"llama3.2","messages":[null]}',
            "json: cannot unmarshal null into Go struct field ChatRequest.messages "
            "of type api.Message",
        ),
        (
            b'{"model":"llama3.2","messages":[1]}',
            "json: cannot unmarshal number into Go struct field ChatRequest.messages "
            "of type api.Message",
        ),
        (
            b'{"model":"llama3.2","messages":[{"role":"user","content":"x"}],'
            b'"options":{"temperature":1e999}}',
            "json: cannot unmarshal number 1e999 into Go struct field ChatRequest.options "
            "of type float64",
        ),
        (
            b'{"model":"llama3.2","messages":[],"format":7}',
            'invalid format: "7"; expected "json" or a valid JSON Schema object',
        ),
    ],
)
async def test_wrong_shapes_get_the_decoder_text(
    cluster: Cluster, raw: bytes, message: str
) -> None:
    status, answer = await call(cluster, "POST", "/api/chat", raw=raw)
    assert (status, answer) == (400, {"error": message})


@pytest.mark.parametrize(
    "path",
    [
        "/sessions?limit=100000",
        "/sessions?limit=-1",
        "/sessions?limit=ten",
        "/sessions?offset=-5",
        "/sessions?offset=99999999999999999999999",
        "/api/search?q=hello&limit=5000",
        "/api/search?q=hello&limit=1.5",
        "/admin/dlq?limit=100000",
        "/admin/dlq?limit=-1",
    ],
)
async def test_paging_out_of_bounds_is_400(cluster: Cluster, path: str) -> None:
    status, answer = await call(cluster, "GET", path)
    assert status == 400, answer
    assert "must be a whole number from" in corral_invalid(answer)


async def test_echoed_model_names_are_clipped(cluster: Cluster) -> None:
    huge = "m" * 1_000_000
    status, answer = await call(cluster, "POST", "/api/chat", {**CHAT, "model": huge})
    assert status == 404
    assert len(orjson.dumps(answer)) < 1000


async def test_provider_pull_passes_a_backend_refusal_as_400(cluster: Cluster) -> None:
    status, answer = await call(
        cluster, "POST", "/api/providers/ollama/pull", {"model": "Bad Name!!"}
    )
    assert status == 400, answer
    assert corral_invalid(answer) == "invalid model name"
    assert answer["error"]["details"]["backend_status"] == 400


async def test_lane_commands_answer_the_new_state(cluster: Cluster, emu: EmulatorControl) -> None:
    try:
        for action, paused, draining in (
            ("pause", True, False),
            ("resume", False, False),
            ("drain", False, True),
            ("resume", False, False),
        ):
            status, answer = await call(cluster, "POST", f"/admin/lane/{action}")
            assert status == 202
            assert answer["state"] == {"paused": paused, "draining": draining}
            assert answer["schedulers"]
            for scheduler in answer["schedulers"]:
                assert scheduler["applied"] is True, answer
                assert (scheduler["paused"], scheduler["draining"]) == (paused, draining)
    finally:
        await call(cluster, "POST", "/admin/lane/resume")
    await assert_lane_serves(cluster)
