"""Backend failures as clients see them: refusals pass through, silence is 504, absence 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral_common.errors import CorralError, ErrorType
from corral_devstack.ports import free_port
from corral_model_manager.backend import Backend
from corral_model_manager.catalogue import ModelCatalogue


@pytest.fixture
async def hung() -> AsyncIterator[str]:
    """A backend that accepts requests and never answers them."""
    never = asyncio.Event()

    async def silent(_: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    async def empty(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"status":"pulling manifest"}\n')
        await never.wait()
        return response

    app = web.Application()
    app.router.add_get("/api/tags", silent)
    app.router.add_delete("/api/delete", empty)
    app.router.add_post("/api/pull", stalls)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    never.set()
    await server.close()


async def test_a_silent_backend_is_a_504(hung: str) -> None:
    async with aiohttp.ClientSession() as session:
        catalogue = ModelCatalogue(session, hung, ttl_s=60, timeout_s=0.1)
        with pytest.raises(CorralError) as info:
            await catalogue.tags()
    assert info.value.error_type is ErrorType.BACKEND_TIMEOUT
    assert info.value.status == 504
    assert info.value.message.startswith("Timeout")
    assert info.value.details["ollama_host"] == hung


async def test_a_stalled_stream_is_a_504_after_its_first_lines(hung: str) -> None:
    async with aiohttp.ClientSession() as session:
        backend = Backend(session, hung, timeout_s=5, stall_timeout_s=0.1)
        lines: list[dict[str, Any]] = []

        async def read() -> None:
            async for line in backend.stream("/api/pull", {"model": "x"}):
                lines.append(line)

        with pytest.raises(CorralError) as info:
            await read()
    assert lines == [{"status": "pulling manifest"}]
    assert info.value.status == 504


async def test_an_empty_200_is_an_empty_answer(hung: str) -> None:
    async with aiohttp.ClientSession() as session:
        backend = Backend(session, hung, timeout_s=5)
        assert await backend.call("DELETE", "/api/delete", {"model": "x"}) == {}


async def test_an_absent_backend_is_a_503() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        backend = Backend(session, dead, timeout_s=5)
        with pytest.raises(CorralError) as info:
            async for _ in backend.stream("/api/pull", {"model": "x"}):
                pass
    assert info.value.error_type is ErrorType.OLLAMA_CONNECTION_ERROR
    assert info.value.status == 503
    assert dead in info.value.message
