"""What a running cluster rarely shows on demand, against a stand-in gateway in the test's
process: an unhealthy cluster, a gateway that answers too late, a pull stream cut short, an
error page that is not JSON. corralctl runs in a thread (it is synchronous) through `main`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from corralctl.cli import main

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

UNHEALTHY = {
    "status": "unhealthy",
    "reasons": ["broker disconnected"],
    "version": "0.1.0",
    "ollama": {"connected": False, "url": "http://127.0.0.1:11434", "error": "refused"},
    "queue": {"depth": 0, "waiting": 0, "running": 0},
    "lane": {"stuck": False},
    "broker": {"connected": False},
    "standby": {"schedulers": 0, "expected": 1, "available": False},
    "store": {"state": "unknown"},
}


async def corralctl(
    server: TestServer, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["--url", str(server.make_url("")), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def start(aiohttp_server: ServerFactory, *routes: web.RouteDef) -> TestServer:
    app = web.Application()
    app.add_routes(routes)
    return await aiohttp_server(app)


async def test_an_unhealthy_cluster_is_shown_and_exits_1(
    aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response(UNHEALTHY, status=503)

    async def queue(request: web.Request) -> web.Response:
        error = {"type": "broker_unavailable", "message": "message broker is unavailable"}
        return web.json_response({"error": error}, status=503)

    server = await start(aiohttp_server, web.get("/health", health), web.get("/admin/queue", queue))
    code, out, err = await corralctl(server, "status", capsys=capsys)
    assert code == 1
    assert out.startswith(f"Corral 0.1.0 at {server.make_url('')}: unhealthy (broker disconnected)")
    assert "unreachable at http://127.0.0.1:11434: refused" in out
    assert "broker         DOWN" in out
    assert err == (
        "corralctl: no lane details: 503 broker_unavailable: message broker is unavailable\n"
    )
    code, out, _ = await corralctl(server, "status", "--json", capsys=capsys)
    assert code == 1
    assert json.loads(out) == {"health": UNHEALTHY, "queue": None}


async def test_a_gateway_that_answers_too_late_exits_3(
    aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    answered = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await answered.wait()
        return web.json_response({})

    server = await start(aiohttp_server, web.get("/admin/dlq", slow))
    code, out, err = await corralctl(server, "--timeout", "0.2", "dlq", capsys=capsys)
    answered.set()
    assert (code, out) == (3, "")
    assert err == f"corralctl: error: no answer from {server.make_url('')} within 0.2 s\n"


async def test_a_pull_cut_short_is_a_failure(
    aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async def pull(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"status": "pulling manifest"}\n')
        await response.write_eof()
        return response

    server = await start(aiohttp_server, web.post("/api/pull", pull))
    code, out, err = await corralctl(server, "models", "pull", "tiny", capsys=capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "pulling manifest",
        "corralctl: error: the pull of tiny ended before success (last: pulling manifest)",
    ]


async def test_an_error_page_that_is_not_json_is_quoted(
    aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async def proxy(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>")

    server = await start(aiohttp_server, web.get("/sessions", proxy))
    code, out, err = await corralctl(server, "--json", "sessions", "list", capsys=capsys)
    assert (code, out) == (1, "")
    assert err == "corralctl: error: 502: <html>Bad Gateway</html>\n"


async def test_ids_are_sent_as_one_path_segment(
    aiohttp_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    async def delete(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        answer: dict[str, Any] = {"session_id": "a/../b", "deleted": True, "turns_deleted": 0}
        return web.json_response(answer)

    server = await start(aiohttp_server, web.delete("/sessions/{session_id}", delete))
    code, out, _ = await corralctl(server, "sessions", "delete", "a/../b", capsys=capsys)
    assert (code, out) == (0, "deleted session a/../b (0 turns)\n")
    assert seen == ["/sessions/a%2F..%2Fb"]
