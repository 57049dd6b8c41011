"""Reading a fast backend's stream in spells: once a stream has shown itself fast, each read of
non-final chunks leaves the socket unread for a spell; a slow or short stream is never held, a
held socket reads again when its spell ends or the stream does, and a stream read in spells
arrives whole, in order, on a connection that goes on serving."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral_scheduler.backends.base import ChunkRun
from corral_scheduler.backends.ollama import OllamaBackend
from corral_scheduler.backends.read_spells import ReadSpells

FOREVER_S = 3600.0


class Transport:
    """The part of an asyncio transport the spells touch."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reading = True
        self.closing = False
        self.resumed = asyncio.Event()

    def pause_reading(self) -> None:
        self.calls.append("pause")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume")
        self.reading = True
        self.resumed.set()

    def is_closing(self) -> bool:
        return self.closing


class Response:
    def __init__(self, transport: Transport | None) -> None:
        self.connection = None if transport is None else type("C", (), {"transport": transport})


def spells(transport: Transport | None, spell_s: float, fast_after: int = 4) -> ReadSpells:
    return ReadSpells(Response(transport), spell_s, fast_after)  # type: ignore[arg-type]


async def test_a_fast_stream_is_held_after_its_first_chunks_once_per_spell() -> None:
    transport = Transport()
    reads = spells(transport, FOREVER_S)
    reads.read(2)
    reads.read(2)
    # Its first chunks are read as they come, however fast.
    assert transport.calls == []
    reads.read(3)
    assert transport.calls == ["pause"] and reads.holding
    # Already held: not held twice.
    reads.read(3)
    assert transport.calls == ["pause"]
    # The stream is over: read on at once.
    reads.end()
    assert transport.calls == ["pause", "resume"] and not reads.holding
    reads.end()
    assert transport.calls == ["pause", "resume"]


async def test_a_held_socket_reads_again_when_its_spell_ends() -> None:
    transport = Transport()
    reads = spells(transport, 0.001, fast_after=0)
    reads.read(5)
    assert transport.calls == ["pause"]
    await transport.resumed.wait()
    assert transport.reading and not reads.holding
    reads.end()
    assert transport.calls == ["pause", "resume"]


async def test_a_slow_stream_is_never_held() -> None:
    # One chunk a read, none within a spell of the one before (a spell of 0): real token rates.
    transport = Transport()
    reads = spells(transport, 0.0, fast_after=0)
    for _ in range(100):
        reads.read(1)
    assert transport.calls == []


async def test_a_short_stream_is_never_held() -> None:
    transport = Transport()
    reads = spells(transport, FOREVER_S, fast_after=64)
    for _ in range(7):
        reads.read(8)
    assert transport.calls == []


async def test_without_a_live_connection_nothing_is_held() -> None:
    spells(None, FOREVER_S, fast_after=0).read(5)
    closing = Transport()
    closing.closing = True
    reads = spells(closing, FOREVER_S, fast_after=0)
    reads.read(5)
    reads.end()
    assert closing.calls == []


def line(n: int) -> bytes:
    chunk = {"model": "m", "message": {"role": "assistant", "content": f" t{n}"}, "done": False}
    return orjson.dumps(chunk)


async def test_a_fast_stream_read_in_spells_arrives_whole_on_a_connection_that_serves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = 0
    read = ReadSpells.read

    def counted(self: ReadSpells, chunks: int) -> None:
        nonlocal held
        before = self.holding
        read(self, chunks)
        held += self.holding and not before

    monkeypatch.setattr(ReadSpells, "read", counted)
    tokens = 3000
    final = {"model": "m", "done": True, "eval_count": tokens}

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # One chunk per token, as Ollama writes them, as fast as the loop goes.
        for n in range(tokens):
            await response.write(line(n) + b"\n")
        await response.write(orjson.dumps(final) + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    connector = aiohttp.TCPConnector(limit=1)
    async with TestServer(app) as server, aiohttp.ClientSession(connector=connector) as session:
        backend = OllamaBackend(
            session, str(server.make_url("")), connect_timeout_s=5, read_timeout_s=5
        )
        for _ in range(2):
            got: list[Any] = []
            async with backend.stream("chat", {"model": "m"}) as pieces:
                async for piece in pieces:
                    got += piece.chunks if type(piece) is ChunkRun else [piece]
            assert got == [*(orjson.loads(line(n)) for n in range(tokens)), final]
    # The spells did happen (the stream was fast enough to be held).
    assert held > 0
