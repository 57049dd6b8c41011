"""Watching a running cluster: the blocks of /health
(`sessions`, `metrics`, `ollama.models_available`), the access log (one line per request, no
secret), `GET /admin/usage`, and the gateway's request-level series on its /metrics, over a whole
cluster with keys on, in front of the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory
from tests.gateway_http import call, create_user_key, keyed_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

MODEL, OTHER_MODEL = "llama3.2", "qwen2.5:0.5b"


@pytest.fixture(scope="module")
def watched(new_cluster: ClusterFactory) -> Iterator[tuple[Cluster, str, dict[str, Any]]]:
    """The whole cluster with keys on, its operator's key, and a user key (`alice`)."""
    with keyed_cluster(
        new_cluster,
        "observability",
        CORRAL_STATUS_INTERVAL_S="0.5",
        CORRAL_SESSION_COUNT_INTERVAL_S="0.5",
    ) as (cluster, admin):
        user = create_user_key(cluster.gateway_url, admin, "alice")
        yield cluster, admin, user


@pytest.fixture
async def traffic(
    watched: tuple[Cluster, str, dict[str, Any]], emu: EmulatorControl
) -> tuple[Cluster, str, dict[str, Any]]:
    """Alice's requests: a session's two turns, a swap to another model (with a load the
    backend takes 120 ms for), a stateless chat too long for its window, an unknown model."""
    cluster, _, user = watched
    await emu.configure(load_ms=120)
    url, key = cluster.gateway_url, user["key"]

    async def chat(model: str, messages: list[dict[str, str]], **extra: Any) -> Any:
        body = {"model": model, "messages": messages, "stream": False, **extra}
        status, _, answer = await call("POST", f"{url}/api/chat", key=key, body=body)
        return status, answer

    status, first = await chat(MODEL, [{"role": "user", "content": "hi"}], session_id="new")
    assert status == 200, first
    status, _ = await chat(
        MODEL, [{"role": "user", "content": "again"}], session_id=first["session_id"]
    )
    assert status == 200
    assert (await chat(OTHER_MODEL, [{"role": "user", "content": "other"}]))[0] == 200
    long = [{"role": "user", "content": "word " * 200} for _ in range(6)]
    status, truncated = await chat(
        MODEL, [*long, {"role": "user", "content": "last"}], options={"num_ctx": 512}
    )
    assert status == 200 and truncated["context_info"]["truncated"] is True
    assert (await chat("no-such-model", [{"role": "user", "content": "x"}]))[0] == 404
    return watched


async def test_health_has_the_seeds_sessions_metrics_and_models(
    traffic: tuple[Cluster, str, dict[str, Any]],
) -> None:
    cluster, _, _ = traffic
    seen: dict[str, Any] = {}

    async def counted() -> bool:
        status, _, body = await call("GET", f"{cluster.gateway_url}/health")
        seen.update(body)
        # The store counts, and the scheduler reports its swaps, on their own schedules.
        swapped = body["metrics"]["model_switches_per_hour"] >= 1
        return status == 200 and (body["sessions"]["active"] or 0) >= 1 and swapped

    await eventually(counted, 15, "the sessions' count and the model swap in /health")
    sessions, metrics = seen["sessions"], seen["metrics"]
    assert {type(sessions[k]) for k in ("active", "total", "archived_today")} == {int}
    assert sessions["total"] >= sessions["active"] >= 1
    assert isinstance(metrics["context_truncation_rate"], float)
    assert 0 < metrics["context_truncation_rate"] < 1
    assert isinstance(metrics["average_tokens_per_request"], int)
    assert metrics["average_tokens_per_request"] > 0
    assert isinstance(metrics["model_switches_per_hour"], int)
    assert isinstance(seen["ollama"]["models_available"], int)
    assert seen["ollama"]["models_available"] >= 2


async def test_the_usage_report_by_model_and_caller(
    traffic: tuple[Cluster, str, dict[str, Any]],
) -> None:
    cluster, admin, user = traffic
    status, _, report = await call("GET", f"{cluster.gateway_url}/admin/usage", key=admin)
    assert status == 200, report
    assert report["scope"] == "gateway"
    caller = report["by_caller"][f"key:{user['id']}"]
    assert caller["requests"] >= 5 and caller["errors"] >= 1
    assert caller["tokens"]["generated"] > 0
    assert report["by_model"][OTHER_MODEL]["requests"] >= 1
    assert report["by_model"]["no-such-model"]["errors"] >= 1
    assert report["sessions"]["total"] is None or report["sessions"]["total"] >= 1
    # An admin route: a user key is refused.
    assert (await call("GET", f"{cluster.gateway_url}/admin/usage", key=user["key"]))[0] == 403


async def test_the_gateways_metrics_carry_the_request_level_series(
    traffic: tuple[Cluster, str, dict[str, Any]],
) -> None:
    cluster, admin, _ = traffic
    status, _, text = await call("GET", f"{cluster.gateway_url}/metrics", key=admin)
    assert status == 200
    for series in (
        "corral_gateway_queue_wait_seconds_count",
        f'corral_gateway_tokens_total{{kind="generated",model="{MODEL}"}}',
        f'corral_gateway_context_truncations_total{{model="{MODEL}"}}',
        "corral_gateway_model_load_time_seconds_count",
        'corral_gateway_queue_depth{state="waiting"}',
    ):
        assert series in text, series


def json_lines(log: bytes) -> list[bytes]:
    """A service's log lines that are JSON events (the launcher writes plain lines too)."""
    return [line for line in log.splitlines() if line.startswith(b"{")]


async def test_one_access_line_per_request_and_no_secret(
    traffic: tuple[Cluster, str, dict[str, Any]],
) -> None:
    cluster, admin, user = traffic
    log_path = cluster.services["gateway"].log_path
    lines: list[dict[str, Any]] = []

    async def logged() -> bool:
        lines[:] = [
            line
            for line in map(orjson.loads, json_lines(log_path.read_bytes()))
            if line.get("event") == "request" and line.get("path") == "/api/chat"
        ]
        return len(lines) >= 5

    await eventually(logged, 10, "the chats' access lines")
    answered = [line for line in lines if line["status"] == 200]
    assert answered, lines
    for line in answered:
        assert line["level"] == "info"
        assert line["key_id"] == user["id"]
        assert line["method"] == "POST"
        assert line["model"] in (MODEL, OTHER_MODEL)
        assert isinstance(line["queue_wait_ms"], int)
        assert line["duration_ms"] > 0
        assert line["request_id"]
    assert any(line["status"] == 404 and line["model"] == "no-such-model" for line in lines)
    text = log_path.read_text(errors="replace")
    assert user["key"] not in text and admin not in text


def access_lines(cluster: Cluster, request_id: str) -> list[dict[str, Any]]:
    """The gateway's access lines for one request id."""
    log = cluster.services["gateway"].log_path.read_bytes()
    return [
        line
        for line in map(orjson.loads, json_lines(log))
        if line.get("event") == "request" and line.get("request_id") == request_id
    ]


async def test_exactly_one_access_line_per_request_streamed_or_not(
    watched: tuple[Cluster, str, dict[str, Any]],
) -> None:
    """One line each, written when the answer is over: not one per chunk of a stream, nor a
    second one when the request's job ends after its answer."""
    cluster, _, user = watched
    for stream in (False, True):
        request_id = f"access-once-{'stream' if stream else 'whole'}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "once"}], "stream": stream}
        status, _, _ = await call(
            "POST",
            f"{cluster.gateway_url}/api/chat",
            key=user["key"],
            body=body,
            headers={"X-Request-Id": request_id},
        )
        assert status == 200
        # A request after it, logged: the chat's own line (and any second one written by the
        # end of its answer or its job) is in the log before this one's.
        after = f"{request_id}-after"
        headers = {"X-Request-Id": after}
        status, _, _ = await call(
            "GET", f"{cluster.gateway_url}/api/tags", key=user["key"], headers=headers
        )
        assert status == 200

        async def logged(after: str = after) -> bool:
            return len(access_lines(cluster, after)) == 1

        await eventually(logged, 10, f"{after}'s access line")
        [line] = access_lines(cluster, request_id)
        assert (line["status"], line["model"], line["key_id"]) == (200, MODEL, user["id"])
        assert line["level"] == "info" and line["duration_ms"] > 0
