"""The gateway's network edge as a real process on 127.0.0.1: Ollama's Host check and origin
check, and bounded connections (hoarded idle sockets do not lock out new clients; a half-sent
request is cut; a queued client's long stream is not)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import httpx
import ollama
import pytest

from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e

PER_IP_CAP = 32
HANG_GUARD_S = 20.0
HELLO = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def edge_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster(
        "edge",
        CORRAL_MAX_CONNECTIONS_PER_IP=str(PER_IP_CAP),
        CORRAL_HEADER_TIMEOUT_S="1",
        CORRAL_IDLE_TIMEOUT_S="1",
        CORRAL_HEARTBEAT_S="0.5",
    ) as cluster:
        yield cluster


def address(cluster: Cluster) -> tuple[str, int]:
    parts = urlsplit(cluster.gateway_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def closed(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(HANG_GUARD_S):
        return await reader.read()


async def test_a_rebound_host_is_refused(edge_cluster: Cluster, emu: EmulatorControl) -> None:
    body = {"model": "llama3.2", "messages": HELLO, "stream": False}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{edge_cluster.gateway_url}/api/chat",
            json=body,
            headers={"Host": f"attacker.example:{address(edge_cluster)[1]}"},
        ) as refused:
            assert refused.status == 403
            assert await refused.read() == b""
        async with session.post(
            f"{edge_cluster.gateway_url}/api/chat",
            json=body,
            headers={"Host": f"localhost:{address(edge_cluster)[1]}"},
        ) as allowed:
            assert allowed.status == 200
    assert (await emu.stats())["generations"] == 1


async def test_a_cross_site_text_plain_post_cannot_act(
    edge_cluster: Cluster, emu: EmulatorControl
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{edge_cluster.gateway_url}/api/generate",
            data='{"model":"llama3.2","prompt":"hi","stream":false}',
            headers={"Content-Type": "text/plain", "Origin": "https://attacker.example"},
        ) as refused:
            assert refused.status == 403
        async with session.options(
            f"{edge_cluster.gateway_url}/api/chat",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as preflight:
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert (await emu.stats())["generations"] == 0


async def test_hoarded_idle_sockets_do_not_lock_out_new_clients(
    edge_cluster: Cluster, emu: EmulatorControl
) -> None:
    host, port = address(edge_cluster)
    hoard: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(PER_IP_CAP * 4):
            hoard.append(await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0)))
        # The gateway keeps at most the cap of them: the rest are closed (the oldest idle
        # ones make room for newer ones).
        reads = [asyncio.ensure_future(closed(reader)) for reader, _ in hoard]
        async with asyncio.timeout(HANG_GUARD_S):
            while sum(r.done() for r in reads) < PER_IP_CAP * 3:
                pending = [r for r in reads if not r.done()]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        # A new client from another address, and one from the hoarding address, get answers.
        for source in ("127.0.0.2", "127.0.0.1"):
            transport = httpx.AsyncHTTPTransport(local_address=source)
            client = ollama.AsyncClient(host=edge_cluster.gateway_url, transport=transport)
            response = await client.chat(model="llama3.2", messages=HELLO)
            assert response.message.content == expected_reply("Why is the sky blue?")
        for read in reads:
            read.cancel()
    finally:
        for _, writer in hoard:
            writer.close()


async def test_a_half_sent_request_is_cut_but_a_queued_stream_is_not(
    edge_cluster: Cluster, emu: EmulatorControl
) -> None:
    host, port = address(edge_cluster)
    await emu.hold()
    client = ollama.AsyncClient(host=edge_cluster.gateway_url)

    async def chat_stream() -> list[ollama.ChatResponse]:
        stream = await client.chat(model="llama3.2", messages=HELLO, stream=True)
        return [chunk async for chunk in stream]

    streaming = asyncio.create_task(chat_stream())
    # Its generation is running (held by the emulator): the stream is open and waiting.
    await emu.wait(held=1)
    # Clocks started after the stream: a half-sent request line is cut by the header
    # timeout, a kept-alive connection by the idle timeout. The stream outlives both.
    slow_reader, slow = await asyncio.open_connection(host, port)
    slow.write(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    kept_reader, kept = await asyncio.open_connection(host, port)
    kept.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    try:
        assert await closed(slow_reader) == b""
        assert (await closed(kept_reader)).endswith(b"Ollama is running")
    finally:
        slow.close()
        kept.close()
    await emu.release()
    async with asyncio.timeout(HANG_GUARD_S):
        chunks = await streaming
    assert chunks[-1].done is True
    text = "".join(chunk.message.content or "" for chunk in chunks)
    assert text == expected_reply("Why is the sky blue?")
