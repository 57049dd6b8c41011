"""Bounded connections, in process over loopback: the caps, the header timeout, and a long
stream that outlives every timeout. Waits are on events (a socket's EOF, a handler's signal);
timeouts here are only hang guards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from corral_gateway.connections import (
    REFUSAL,
    ConnectionGuard,
    GuardedAppRunner,
    GuardedRequestHandler,
)

HANG_GUARD_S = 10.0
STREAM_STARTED = web.AppKey("stream_started", asyncio.Event)
STREAM_RELEASE = web.AppKey("stream_release", asyncio.Event)


def make_app() -> web.Application:
    app = web.Application()
    app[STREAM_STARTED] = asyncio.Event()
    app[STREAM_RELEASE] = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stream(request: web.Request) -> web.StreamResponse:
        # A queued client: a first chunk, then a wait the test ends.
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"queue_info":{"position":1}}\n')
        request.app[STREAM_STARTED].set()
        await request.app[STREAM_RELEASE].wait()
        await response.write(b'{"done":true}\n')
        return response

    app.router.add_get("/", hello)
    app.router.add_get("/stream", stream)
    return app


@dataclass
class Served:
    app: web.Application
    guard: ConnectionGuard
    port: int
    sockets: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open_idle(self, source: str = "127.0.0.1") -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(source, 0)
        )
        self.sockets.append(writer)
        return reader

    async def get(self, path: str = "/", source: str = "127.0.0.1") -> tuple[int, str]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(self.url + path) as response,
        ):
            return response.status, await response.text()


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []
    served: list[Served] = []

    async def start(
        *, per_ip: int = 0, total: int = 0, header_timeout: float = 30.0, idle: float = 30.0
    ) -> Served:
        app = make_app()
        guard = ConnectionGuard(per_ip=per_ip, total=total)
        runner = GuardedAppRunner(
            app,
            guard=guard,
            header_timeout=header_timeout,
            keepalive_timeout=idle,
            handler_cancellation=True,
            access_log=None,
        )
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        result = Served(app, guard, site.port)
        served.append(result)
        return result

    yield start
    for s in served:
        s.app[STREAM_RELEASE].set()
        for writer in s.sockets:
            writer.close()
    for runner in runners:
        await runner.cleanup()


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    async with asyncio.timeout(HANG_GUARD_S):
        return await reader.read()


async def first_closed(readers: list[asyncio.StreamReader], count: int) -> None:
    """Waits until `count` of the connections are closed by the server."""
    tasks = [asyncio.ensure_future(closed(r)) for r in readers]
    try:
        async with asyncio.timeout(HANG_GUARD_S):
            while sum(t.done() for t in tasks) < count:
                await asyncio.wait(
                    [t for t in tasks if not t.done()], return_when="FIRST_COMPLETED"
                )
    finally:
        for t in tasks:
            t.cancel()


def test_aiohttp_internals_the_guard_reads_are_still_there() -> None:
    slots = set(RequestHandler.__slots__)
    assert {"_waiter", "_messages", "_request_count"} <= slots
    assert issubclass(GuardedRequestHandler, RequestHandler)


# --- ConnectionGuard, pure ------------------------------------------------------------------


class Fake:
    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.evicted: str | None = None

    def evict(self, reason: str) -> None:
        self.evicted = reason


def test_per_ip_cap_evicts_the_oldest_idle_then_refuses() -> None:
    guard = ConnectionGuard(per_ip=2, total=0)
    a, b, c = Fake(idle=False), Fake(), Fake()
    assert guard.admit(a, "10.0.0.1") and guard.admit(b, "10.0.0.1")
    assert guard.admit(Fake(), "10.0.0.2")  # another address has its own budget
    assert guard.admit(c, "10.0.0.1")
    assert b.evicted == "per_ip_cap" and a.evicted is None
    assert guard.open_for("10.0.0.1") == 2
    c.idle = False
    assert not guard.admit(Fake(), "10.0.0.1")
    assert guard.refused == 1 and guard.evicted == 1
    guard.release(a)
    guard.release(a)  # idempotent
    assert guard.open_for("10.0.0.1") == 1 and guard.open_total == 2


def test_total_cap() -> None:
    guard = ConnectionGuard(per_ip=0, total=2)
    old, busy = Fake(), Fake(idle=False)
    assert guard.admit(old, "a") and guard.admit(busy, "b")
    assert guard.admit(Fake(idle=False), "c")
    assert old.evicted == "total_cap"
    assert not guard.admit(Fake(), "d")
    assert guard.open_total == 2


# --- Over real sockets ----------------------------------------------------------------------


async def test_idle_sockets_beyond_the_cap_are_closed_and_new_clients_answered(
    serve: Serve,
) -> None:
    served = await serve(per_ip=8)
    hoard = [await served.open_idle() for _ in range(20)]
    await first_closed(hoard, 12)
    assert served.guard.open_for("127.0.0.1") == 8
    assert served.guard.evicted + served.guard.refused == 12
    # A client from another address is answered, and so is one from the hoarding address:
    # an idle socket makes room for it.
    assert await served.get(source="127.0.0.2") == (200, "ok")
    assert await served.get(source="127.0.0.1") == (200, "ok")
    assert served.guard.open_for("127.0.0.1") <= 8


async def test_total_cap_makes_room_from_idle_sockets(serve: Serve) -> None:
    served = await serve(total=6)
    hoard = [await served.open_idle(f"127.0.0.{1 + i % 3}") for i in range(10)]
    await first_closed(hoard, 4)
    assert served.guard.open_total == 6
    assert await served.get(source="127.0.0.9") == (200, "ok")


async def test_busy_connections_are_kept_and_the_newcomer_refused(serve: Serve) -> None:
    served = await serve(per_ip=1)
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url + "/stream") as streaming,
    ):
        await streaming.content.readline()
        # The only slot is a request being served: it is not closed for the newcomer.
        refused = await served.open_idle()
        assert await closed(refused) == REFUSAL
        assert served.guard.refused == 1
        served.app[STREAM_RELEASE].set()
        assert await streaming.content.readline() == b'{"done":true}\n'


async def test_a_half_sent_request_line_is_closed_after_the_header_timeout(
    serve: Serve,
) -> None:
    served = await serve(header_timeout=0.2)
    reader = await served.open_idle()
    served.sockets[-1].write(b"GET / HT")
    assert await closed(reader) == b""
    # Silence from the start is the same.
    assert await closed(await served.open_idle()) == b""
    assert await served.get() == (200, "ok")


async def test_a_slow_next_request_on_a_kept_alive_connection_is_closed(serve: Serve) -> None:
    served = await serve(header_timeout=0.2)
    reader = await served.open_idle()
    writer = served.sockets[-1]
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(HANG_GUARD_S):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"ok"
    writer.write(b"GET / HTTP/1.1\r\nHo")
    assert await closed(reader) == b""


async def test_a_long_stream_outlives_the_header_and_idle_timeouts(serve: Serve) -> None:
    served = await serve(per_ip=4, header_timeout=0.2, idle=0.2)
    async with (
        aiohttp.ClientSession() as session,
        session.get(served.url + "/stream") as streaming,
    ):
        assert await streaming.content.readline() == b'{"queue_info":{"position":1}}\n'
        # Two clocks that start after the stream did: a half-sent request is cut by the
        # header timeout, a kept-alive connection by the idle timeout. Only then is the
        # stream let go, so it has lasted longer than both.
        slow = await served.open_idle()
        served.sockets[-1].write(b"POST /api/chat HTTP/1.1\r\n")
        kept = await served.open_idle()
        served.sockets[-1].write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await closed(slow) == b""
        assert (await closed(kept)).endswith(b"ok")
        served.app[STREAM_RELEASE].set()
        assert await streaming.content.readline() == b'{"done":true}\n'
        assert await streaming.content.read() == b""
    assert streaming.status == 200
