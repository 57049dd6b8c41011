"""The request manager (retries of a backend that is not ready, per-request timeouts) through a
real cluster: a backend that refuses before answering is retried with backoff, and the client
sees only a longer wait (the attempts counted on the emulator and the scheduler's metric, never
timed); a request's own retry terms; its total deadline, 408 in the queue and 504 (or a
stream's last line) while generating, with the lane free for the next request; and `retry_after`
in Corral's error bodies, each surface keeping its own shape."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import ollama
import orjson
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory
from tests.service_metrics import metric_value

pytestmark = pytest.mark.e2e

MODEL = "llama3.2"
# A reply of about 300 tokens: long enough that a short deadline always falls inside it.
LONG_PROMPT = " ".join(f"word{i}" for i in range(300))


@pytest.fixture(scope="module")
def manager(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    """A scheduler and a gateway whose retries wait little (the schedule itself is the
    scheduler's unit tests' business)."""
    with new_cluster(
        "request-manager",
        CORRAL_RETRY_BACKOFF_S="0.05",
        CORRAL_RETRY_BACKOFF_MAX_S="0.2",
        CORRAL_HEARTBEAT_S="1",
        CORRAL_STATUS_INTERVAL_S="0.5",
    ) as cluster:
        yield cluster


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def read_lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    lines = []
    async for raw in response.content:
        assert raw.strip(), "NDJSON must have no blank lines"
        lines.append(orjson.loads(raw))
    return lines


async def test_a_backend_refusing_twice_is_retried_and_the_client_only_waits(
    manager: Cluster, emu: EmulatorControl
) -> None:
    """The second request waits behind a held first one, then meets a backend that drops its
    first two connections: its stream shows its place, then position 0, then the answer, once."""
    before = await metric_value(manager, 'corral_backend_retries_total{reason="reset"}')
    recovered = await metric_value(
        manager, 'corral_backend_retry_outcomes_total{outcome="recovered"}'
    )
    await emu.hold()
    url = f"{manager.gateway_url}/api/chat"
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(url, json=chat("first", stream=False)))
        await emu.wait(held=1)
        # From here on the backend refuses its next two connections (a restart).
        await emu.fail("refuse", count=2)
        async with session.post(url, json=chat("second, patiently")) as response:
            assert response.status == 200
            first_line = orjson.loads(await response.content.readline())
            assert first_line["queue_info"]["position"] == 1
            await emu.release()
            lines = [first_line, *await read_lines(response)]
        async with await first as answer:
            assert answer.status == 200
    positions = [line["queue_info"]["position"] for line in lines if "queue_info" in line]
    assert "error" not in lines[-1] and lines[-1]["done"] is True
    assert positions[:-1] == sorted(positions[:-1], reverse=True) and 0 in positions
    text = "".join(line["message"]["content"] for line in lines if not line.get("done"))
    assert text == expected_reply("second, patiently")
    stats = await emu.stats()
    assert stats["failures_injected"] == 2
    assert (stats["completed"], stats["max_active"]) == (2, 1)
    assert await metric_value(manager, 'corral_backend_retries_total{reason="reset"}') == (
        before + 2
    )
    assert (
        await metric_value(manager, 'corral_backend_retry_outcomes_total{outcome="recovered"}')
        == recovered + 1
    )


async def test_a_busy_backend_is_retried_through_the_official_client(
    manager: Cluster, emu: EmulatorControl
) -> None:
    """503s from the backend, and the request's own terms in `options` (where the official
    client can carry them); they never reach the backend."""
    await emu.fail(
        "500",
        count=3,
        status=503,
        message="server busy, please try again.  maximum pending requests exceeded",
    )
    client = ollama.AsyncClient(host=manager.gateway_url)
    answer = await client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "busy?"}],
        options={"max_retries": 4, "retry_backoff": 0.01},
    )
    assert answer.message.content == expected_reply("busy?")
    assert (await emu.stats())["failures_injected"] == 3
    sent = (await emu.requests("chat"))[-1]
    assert not {"max_retries", "retry_backoff"} & set(sent.get("options") or {})


async def test_a_request_that_wants_no_retries_gets_the_failure(
    manager: Cluster, emu: EmulatorControl
) -> None:
    await emu.fail("refuse", count=1)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{manager.gateway_url}/api/chat",
            json=chat("no second chance", stream=False, max_retries=0),
        ) as response,
    ):
        assert response.status == 503
        assert (await response.json())["error"].startswith("Cannot connect to Ollama server")
    assert (await emu.stats())["failures_injected"] == 1


async def test_past_its_deadline_a_generation_is_stopped_and_the_lane_moves_on(
    manager: Cluster, emu: EmulatorControl
) -> None:
    """A long generation with a 1.5 s deadline (timeout_ms): 504, its partial answer not kept;
    the request queued behind it is answered; the backend saw the generation cancelled and
    never ran two at once."""
    await emu.configure(token_delay_ms=50)
    timeouts = await metric_value(manager, 'corral_request_timeouts_total{stage="generating"}')
    url = f"{manager.gateway_url}/api/chat"
    async with aiohttp.ClientSession() as session:
        long = asyncio.create_task(
            session.post(url, json=chat(LONG_PROMPT, stream=False, timeout_ms=1500))
        )
        await emu.wait(active=1)
        nxt = asyncio.create_task(session.post(url, json=chat("next in line", stream=False)))
        async with await long as response:
            assert response.status == 504
            body = await response.json()
        async with await nxt as response:
            assert response.status == 200
            answer = await response.json()
    assert set(body) == {"error"}
    assert "deadline" in body["error"] and "not kept" in body["error"]
    assert answer["message"]["content"] == expected_reply("next in line")
    stats = await emu.wait(cancelled=1, completed=1)
    assert stats["max_active"] == 1
    assert (
        await metric_value(manager, 'corral_request_timeouts_total{stage="generating"}')
        == timeouts + 1
    )


async def test_a_stream_past_its_deadline_ends_with_an_error_line(
    manager: Cluster, emu: EmulatorControl
) -> None:
    await emu.configure(token_delay_ms=50)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{manager.gateway_url}/api/chat",
            json=chat(LONG_PROMPT),
            headers={"X-Request-Timeout": "1.5"},
        ) as response,
    ):
        assert response.status == 200
        lines = await read_lines(response)
    assert set(lines[-1]) == {"error"} and "deadline" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)
    # What was streamed is a prefix of the answer that was not finished.
    text = "".join(line["message"]["content"] for line in lines[:-1])
    assert expected_reply(LONG_PROMPT).startswith(text) and text != expected_reply(LONG_PROMPT)
    await emu.wait(cancelled=1)


async def test_past_its_deadline_in_the_queue_is_a_408_and_never_runs(
    manager: Cluster, emu: EmulatorControl
) -> None:
    await emu.hold()
    url = f"{manager.gateway_url}/api/chat"
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(url, json=chat("holding", stream=False)))
        await emu.wait(held=1)
        async with session.post(
            url, json=chat("in a hurry", stream=False, options={"timeout": 0.5})
        ) as response:
            assert response.status == 408
            assert (await response.json())["error"].startswith("request timed out in the queue")
        await emu.release()
        async with await first as answer:
            assert answer.status == 200
    contents = [r["messages"][-1]["content"] for r in await emu.requests("chat")]
    assert "in a hurry" not in contents


@pytest.mark.parametrize(
    ("extra", "headers", "text"),
    [
        ({"timeout_ms": 0}, {}, "invalid timeout_ms 0"),
        ({}, {"X-Request-Timeout": "soon"}, "invalid X-Request-Timeout 'soon'"),
        ({"max_retries": -1}, {}, "invalid max_retries -1"),
        ({"options": {"retry_backoff": "fast"}}, {}, "invalid retry_backoff 'fast'"),
    ],
)
async def test_terms_that_cannot_be_are_a_400(
    manager: Cluster,
    emu: EmulatorControl,
    extra: dict[str, Any],
    headers: dict[str, str],
    text: str,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{manager.gateway_url}/api/chat", json=chat("x", **extra), headers=headers
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"].startswith(text)
    assert (await emu.stats())["generations"] == 0


@pytest.fixture
def limited(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    """A cluster that lets one request a minute through from an address (counted by the
    session store, as rate limits are)."""
    with new_cluster(
        "retry-after", whole=True, CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE="1"
    ) as cluster:
        yield cluster


async def test_retry_after_is_in_corrals_bodies_and_each_surface_keeps_its_shape(
    limited: Cluster,
) -> None:
    """A caller over its rate limit: 429 with Retry-After everywhere; Corral's body says the
    same seconds as `retry_after`, Ollama's stays `{"error": "<text>"}`, /v1 stays OpenAI's."""
    base = limited.gateway_url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/queue/first") as spent:
            assert spent.status != 429
        async with session.get(f"{base}/queue/again") as corral:
            assert corral.status == 429
            body = await corral.json()
            assert set(body) == {"error"}
            assert body["error"]["type"] == "rate_limit_exceeded"
            assert body["error"]["retry_after"] == int(corral.headers["Retry-After"])
            assert body["error"]["retry_after"] >= 1
        async with session.post(f"{base}/api/chat", json=chat("x")) as native:
            assert native.status == 429 and "Retry-After" in native.headers
            assert set(await native.json()) == {"error"}
        async with session.post(
            f"{base}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        ) as openai:
            assert openai.status == 429 and "Retry-After" in openai.headers
            error = (await openai.json())["error"]
            assert {"message", "type", "code"} <= set(error) and "retry_after" not in error
