"""The backend client reads long NDJSON lines: a 100k-token /api/generate ends with a `context`
array of 100k ints (about 700 KB on one line), past aiohttp's own line limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.test_utils import TestServer

from corral_emulator import EmulatorConfig
from corral_emulator import create_app as create_emulator
from corral_scheduler.backends.base import BackendStreamError, Chunk, ChunkRun
from corral_scheduler.backends.ollama import OllamaBackend, ndjson_lines

CONTEXT_TOKENS = 100_000


async def backend_for(app: web.Application) -> AsyncIterator[OllamaBackend]:
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        yield OllamaBackend(
            session, str(server.make_url("")), connect_timeout_s=5, read_timeout_s=30
        )


async def collect(backend: OllamaBackend, payload: dict[str, object]) -> list[Chunk]:
    """Every chunk, a run's one by one."""
    collected: list[Chunk] = []
    async with backend.stream("generate", payload) as pieces:
        async for piece in pieces:
            if isinstance(piece, ChunkRun):
                collected += piece.chunks
            else:
                collected.append(piece)
    return collected


async def test_a_huge_final_chunk_written_in_pieces_is_read_whole() -> None:
    final = {"response": "", "done": True, "context": list(range(CONTEXT_TOKENS))}
    body = b'{"response":"a","done":false}\n' + orjson.dumps(final) + b"\n"
    assert len(body) > 500_000

    async def generate(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        # Odd-sized writes, so lines straddle reads.
        for start in range(0, len(body), 7919):
            await response.write(body[start : start + 7919])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    async for backend in backend_for(app):
        chunks = await collect(backend, {"model": "m", "prompt": "p"})
    assert [c["done"] for c in chunks] == [False, True]
    assert chunks[1]["context"] == list(range(CONTEXT_TOKENS))
    # What this replaced: aiohttp's own line reading gives up on such a line.
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/api/generate")) as response,
    ):
        with pytest.raises(LineTooLong):
            async for _ in response.content:
                pass


async def test_an_endless_line_is_a_stream_error_not_a_memory_leak() -> None:
    async def generate(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(8):
            await response.write(b"x" * 65536)
        return response

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    async with (
        TestServer(app) as server,
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/api/generate")) as response,
    ):
        with pytest.raises(BackendStreamError, match="without an end"):
            async for _ in ndjson_lines(response.content, max_line_bytes=200_000):
                pass


async def test_the_emulator_returns_a_100k_token_context_and_it_is_read() -> None:
    """The project's own emulator echoes a request's `context` in its final chunk, as Ollama
    does, so a long conversation's context comes back whole."""
    context = list(range(1, CONTEXT_TOKENS + 1))
    app = create_emulator(EmulatorConfig())
    async for backend in backend_for(app):
        chunks = await collect(
            backend,
            {
                "model": "llama3.2",
                "prompt": "go on",
                "context": context,
                "options": {"num_predict": 3},
            },
        )
    final = chunks[-1]
    assert final["done"] is True
    returned = final["context"]
    assert isinstance(returned, list) and returned[:CONTEXT_TOKENS] == context
