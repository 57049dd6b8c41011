"""The queue users can trust: fair share between callers, priorities, deadlines, per-caller caps,
where-am-I answers, operator controls and the dead-letter queue, through the whole cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest

from corral_common.topology import JOBS_EXCHANGE, JOBS_ROUTING_KEY
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl
from tests.fixtures import ClusterFactory
from tests.polling import eventually
from tests.service_metrics import metric_value, wait_for_value

pytestmark = pytest.mark.e2e


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def queue_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "queue",
        CORRAL_STATUS_INTERVAL_S="0.2",
        CORRAL_HEARTBEAT_S="0.5",
        CORRAL_MAX_QUEUED_PER_KEY="2",
        CORRAL_QUEUE_TIMEOUT_MAX_S="120",
    ) as cluster:
        yield cluster


@asynccontextmanager
async def queued(
    session: aiohttp.ClientSession, cluster: Cluster, body: dict[str, Any], **headers: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A streaming request that is certainly in the lane: its first queue chunk has arrived, and
    the scheduler lists it. The chunk alone is not enough: the gateway tells a job behind its own
    running one a provisional place before the scheduler has admitted it."""
    async with session.post(f"{cluster.gateway_url}/api/chat", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        first = orjson.loads(await r.content.readline())
        assert "queue_info" in first, first
        request_id = r.headers["X-Request-Id"]

        async def admitted() -> bool:
            status, spot = await get(cluster, f"/queue/{request_id}", **headers)
            return status == 200 and spot["state"] == "queued"

        await eventually(admitted, what=f"{request_id} admitted by the scheduler")
        yield r


@asynccontextmanager
async def busy_lane(
    emu: EmulatorControl, cluster: Cluster, content: str = "running", **headers: str
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose first request holds the backend (at the emulator's gate), so whatever is
    sent next waits in the lane. The gate opens on leaving, if the test has not opened it."""
    await emu.hold()
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(
            session.post(f"{cluster.gateway_url}/api/chat", json=chat(content), headers=headers)
        )
        await emu.wait(held=1)
        try:
            yield session
        finally:
            await emu.release()
            (await running).close()


async def rest(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    return [orjson.loads(line) async for line in response.content if line.strip()]


async def sent_order(emu: EmulatorControl) -> list[str]:
    return [str(r["messages"][-1]["content"]) for r in await emu.requests("chat")]


async def get(cluster: Cluster, path: str, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cluster.gateway_url}{path}", headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_a_flooding_caller_does_not_starve_another(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    async with (
        busy_lane(emu, queue_cluster, "flood 0", **{"X-Client-Id": "flooder"}) as session,
        queued(session, queue_cluster, chat("flood 1"), **{"X-Client-Id": "flooder"}) as f1,
        queued(session, queue_cluster, chat("flood 2"), **{"X-Client-Id": "flooder"}) as f2,
        queued(session, queue_cluster, chat("polite"), **{"X-Client-Id": "polite"}) as p,
    ):
        await emu.release()
        for response in (f1, f2, p):
            assert (await rest(response))[-1]["done"] is True
    # flood 0 was running; the polite caller's one request went next, not after the flood.
    assert (await sent_order(emu))[:4] == ["flood 0", "polite", "flood 1", "flood 2"]
    assert (await emu.stats())["max_active"] == 1


async def test_interactive_work_goes_before_batch(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    async with (
        busy_lane(emu, queue_cluster, "running") as session,
        queued(session, queue_cluster, chat("batch"), **{"X-Priority": "batch"}) as batch,
        queued(session, queue_cluster, chat("urgent", priority="interactive")) as urgent,
    ):
        await emu.release()
        await rest(batch)
        await rest(urgent)
    assert (await sent_order(emu))[:3] == ["running", "urgent", "batch"]


async def test_a_queue_timeout_is_a_408_and_the_job_never_runs(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    cancelled = 'corral_cancellations_total{stage="queued"}'
    cancelled_before = await metric_value(queue_cluster, cancelled)
    async with busy_lane(emu, queue_cluster, "running") as session:
        url = f"{queue_cluster.gateway_url}/api/chat"
        async with session.post(
            url, json=chat("impatient", stream=False), headers={"X-Queue-Timeout": "0.3"}
        ) as response:
            body = await response.json()
            assert response.status == 408
            assert body["error"].startswith("request timed out in the queue")
        # Through options too (the official client's way), on a stream: a final error line.
        timed = chat("impatient stream", options={"queue_timeout": 0.3})
        async with session.post(url, json=timed) as response:
            lines = await rest(response)
            assert response.status == 200
            assert "queue_info" in lines[0]
            assert lines[-1]["error"].startswith("request timed out in the queue")
        async with session.post(url, json=chat("x"), headers={"X-Queue-Timeout": "soon"}) as bad:
            assert bad.status == 400
        await wait_for_value(queue_cluster, cancelled, cancelled_before + 2)
        await emu.release()
    assert "impatient" not in await sent_order(emu)
    assert "impatient stream" not in await sent_order(emu)


async def test_one_caller_may_queue_only_so_much(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    key = {"X-Client-Id": "greedy"}
    async with (
        busy_lane(emu, queue_cluster, "run", **key) as session,
        queued(session, queue_cluster, chat("q1"), **key),
        queued(session, queue_cluster, chat("q2"), **key),
    ):
        url = f"{queue_cluster.gateway_url}/api/chat"
        body = chat("q3", stream=False)
        async with session.post(url, json=body, headers=key) as refused:
            assert refused.status == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert "too many queued requests" in (await refused.json())["error"]
        # A stream too: refused before any byte of a 200, so its client can back off on the
        # status (the gateway counts its callers' waiting jobs).
        async with session.post(url, json=chat("q4"), headers=key) as refused_stream:
            assert refused_stream.status == 429
            assert int(refused_stream.headers["Retry-After"]) >= 1
            assert "too many queued requests" in (await refused_stream.json())["error"]
        # Another caller is not affected.
        async with queued(session, queue_cluster, chat("other"), **{"X-Client-Id": "other"}):
            await emu.release()


async def test_where_am_i(queue_cluster: Cluster, emu: EmulatorControl) -> None:
    async with busy_lane(emu, queue_cluster, "running") as session:
        body = chat("waiting", request_id="where-1")
        async with queued(session, queue_cluster, body) as response:
            assert response.headers["X-Queue-Position"] == "1"
            assert int(response.headers["X-Estimated-Wait-Ms"]) >= 0
            status, spot = await get(queue_cluster, "/queue/where-1")
            assert status == 200
            assert (spot["state"], spot["position"]) == ("queued", 1)

            # The relay's place may come before the scheduler's next status lists the job.
            async def listed() -> bool:
                status, listing = await get(queue_cluster, "/admin/queue")
                assert status == 200
                lane = [(e["position"], e["request_id"]) for e in listing["queue"]]
                return [p for p, _ in lane] == [0, 1] and lane[1][1] == "where-1"

            await eventually(listed, what="the running request and where-1 listed")
            await emu.release()
            await rest(response)

    # Schedulers' statuses are shared between callers for a moment (so polling clients cannot
    # make them broadcast at their pace): the end shows up within that moment.
    async def gone() -> bool:
        status, missing = await get(queue_cluster, "/queue/where-1")
        return status == 404 and missing["error"]["type"] == "request_not_found"

    await eventually(gone, what="the finished request no longer listed")


async def test_an_operator_cancels_a_queued_request(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    async with busy_lane(emu, queue_cluster, "running") as session:
        async with queued(session, queue_cluster, chat("doomed", request_id="doomed-1")) as r:
            async with session.delete(f"{queue_cluster.gateway_url}/admin/queue/doomed-1") as c:
                assert c.status == 202
                assert (await c.json())["found"] is True
            assert (await rest(r))[-1] == {"error": "request canceled"}
        await emu.release()
    assert "doomed" not in await sent_order(emu)


async def test_pause_resume_and_drain(queue_cluster: Cluster, emu: EmulatorControl) -> None:
    base = queue_cluster.gateway_url
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/admin/lane/pause") as paused:
            assert paused.status == 202
        await eventually(lambda: _lane_flag(queue_cluster, "paused"), what="the lane paused")
        async with queued(session, queue_cluster, chat("held by pause")) as response:
            assert "held by pause" not in await sent_order(emu)
            async with session.post(f"{base}/admin/lane/resume") as resumed:
                assert resumed.status == 202
            assert (await rest(response))[-1]["done"] is True
        async with session.post(f"{base}/admin/lane/drain") as drained:
            assert drained.status == 202
        await eventually(lambda: _lane_flag(queue_cluster, "draining"), what="the lane draining")
        async with session.post(f"{base}/api/chat", json=chat("too late", stream=False)) as late:
            assert late.status == 503
        async with session.post(f"{base}/admin/lane/resume") as resumed:
            assert resumed.status == 202
        async with session.post(f"{base}/admin/lane/reverse") as unknown:
            assert unknown.status == 400
    assert "too late" not in await sent_order(emu)


async def _lane_flag(cluster: Cluster, flag: str) -> bool:
    status, listing = await get(cluster, "/admin/queue")
    return status == 200 and any(s[flag] for s in listing["schedulers"])


async def test_dead_letters_can_be_inspected(queue_cluster: Cluster, emu: EmulatorControl) -> None:
    connection = await aio_pika.connect(queue_cluster.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(JOBS_EXCHANGE)
        await exchange.publish(aio_pika.Message(b"not a job"), routing_key=JOBS_ROUTING_KEY)

    async def dead_lettered() -> bool:
        status, body = await get(queue_cluster, "/admin/dlq?limit=5")
        return status == 200 and body["messages"] >= 1

    await eventually(dead_lettered, what="the unreadable job dead-lettered")
    status, body = await get(queue_cluster, "/admin/dlq?limit=5")
    assert body["queue"] == "scheduler.jobs.dlq"
    assert {"readable": False, "reason": "rejected", "bytes": 9} in body["jobs"]
    status, body = await get(queue_cluster, "/admin/dlq?limit=x")
    assert status == 400

    # The scheduler's gauge of the DLQ's depth sees it too (it once read its first count forever).
    async def gauge_counts_it() -> bool:
        return await metric_value(queue_cluster, "corral_dead_letter_queue_messages") >= 1

    await eventually(gauge_counts_it, what="corral_dead_letter_queue_messages counting the job")


LONG = "leave " + " ".join(f"word{i}" for i in range(60))


async def test_leaving_mid_generation_closes_the_backend_request(
    queue_cluster: Cluster, emu: EmulatorControl
) -> None:
    await emu.configure(token_delay_ms=30)
    generating = 'corral_cancellations_total{stage="generating"}'
    cancelled = 'corral_jobs_total{outcome="cancelled"}'
    before = await metric_value(queue_cluster, generating)
    cancelled_before = await metric_value(queue_cluster, cancelled)
    url = f"{queue_cluster.gateway_url}/api/chat"
    async with aiohttp.ClientSession() as session:
        # Streaming: hang up after the first token.
        async with session.post(url, json=chat(LONG)) as response:
            # The lane is free: no queue chunk, its first line is its first token.
            chunk = orjson.loads(await response.content.readline())
            assert "queue_info" not in chunk, chunk
            assert chunk["message"]["content"]
            response.close()
        await emu.wait(cancelled_midstream=1)
        await wait_for_value(queue_cluster, generating, before + 1)
        # Not streaming: hang up while the backend generates (nothing was written to us yet).
        host, port = queue_cluster.gateway_url.removeprefix("http://").split(":")
        _, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps(chat(LONG, stream=False))
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        await emu.wait(active=1)
        writer.close()
        await writer.wait_closed()
        await emu.wait(cancelled=2)
        await wait_for_value(queue_cluster, cancelled, cancelled_before + 2)
        # The lane moves on only once the backend request is really closed.
        async with session.post(url, json=chat("next", stream=False)) as response:
            assert (await response.json())["message"]["content"]
    assert (await emu.stats())["max_active"] == 1
