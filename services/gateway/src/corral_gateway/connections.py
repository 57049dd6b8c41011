"""Bounded connections: a header timeout, an idle timeout, and caps per client address and in all.

Without bounds, 20,000 idle sockets took every file descriptor the gateway had and new chats
hung (accept() failing with EMFILE makes asyncio stop accepting for a second at a time). What
this module adds, at the connection level, before any request exists:

- **Caps.** Each accepted connection is counted against its peer address
  (`CORRAL_MAX_CONNECTIONS_PER_IP`) and against the total (`CORRAL_MAX_CONNECTIONS`, held below
  the open-file limit so accept() never runs out of descriptors). At a cap, the oldest *idle*
  connection under that cap (kept alive between requests, or still sending its first bytes) is
  closed to make room, so hoarded idle sockets cannot lock out a new client; if every one is
  busy with a request, the newcomer is refused with a 503 and closed at once.
- **Header timeout.** aiohttp has no header-read timeout (3.14: `keepalive_timeout` only, which
  also closes a connection that never sends a byte). A connection must deliver a complete
  request head within `CORRAL_HEADER_TIMEOUT_S` of being accepted, and each later request
  within that time of its first byte, else it is closed (a slowloris sending a byte a second
  never gets further).
- **Idle timeout** is aiohttp's `keepalive_timeout` (`CORRAL_IDLE_TIMEOUT_S`): it closes a
  connection only while it waits for a next request.

Neither timeout ever touches a request in progress: a queued client streaming heartbeats for ten
minutes, or a long answer, is a request being handled, not an idle connection.

It hooks in where aiohttp creates a connection's protocol: `GuardedAppRunner` makes a
`GuardedServer`, which makes a `GuardedRequestHandler` per connection. The handler reads a few
of aiohttp's private `RequestHandler` attributes (`_waiter`, `_messages`, `_request_count`),
the same ones aiohttp's own keep-alive check uses; services/gateway/tests/test_connections.py
fails if they go.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter, Gauge

from corral_common.serving import RunnerFactory, open_file_limit

log = structlog.get_logger(__name__)

OPEN_CONNECTIONS = Gauge("corral_gateway_open_connections", "Client connections open")
CONNECTIONS_CLOSED = Counter(
    "corral_gateway_connections_closed_total",
    "Client connections the gateway closed to bound them, by reason",
    ["reason"],
)

# File descriptors kept for everything that is not a client connection (broker connections,
# log files, DNS, the interpreter's own).
FD_RESERVE = 512
# A refused connection gets a real HTTP answer, so a client sees why (and an SDK retries a 503).
_REFUSAL_BODY = b'{"error":"too many connections, please try again"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


class Connection(Protocol):
    """What the guard needs of a connection."""

    @property
    def idle(self) -> bool: ...

    def evict(self, reason: str) -> None: ...


def total_cap(configured: int) -> int:
    """The total connection cap: as configured (0 = none), but always below the open-file
    limit (read after `raise_open_file_limit`), keeping FD_RESERVE descriptors for the rest."""
    limit = open_file_limit()
    if limit is None:
        return configured
    ceiling = max(limit - FD_RESERVE, limit // 2)
    return min(configured, ceiling) if configured else ceiling


class ConnectionGuard:
    """Counts open connections per peer address and in all, and decides admissions."""

    def __init__(self, *, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        # Insertion-ordered: the first idle connection found is the oldest.
        self._all: dict[Connection, str] = {}
        self._by_ip: dict[str, dict[Connection, None]] = {}
        self.refused = 0
        self.evicted = 0

    def open_for(self, ip: str) -> int:
        return len(self._by_ip.get(ip, ()))

    @property
    def open_total(self) -> int:
        return len(self._all)

    def admit(self, connection: Connection, ip: str) -> bool:
        """Registers `connection` from `ip`, making room by closing an idle one if a cap is
        reached; False (nothing registered) when there is no room."""
        ip_full = self.per_ip > 0 and self.open_for(ip) >= self.per_ip
        if ip_full and not self._evict_oldest_idle(self._by_ip[ip], "per_ip_cap"):
            return self._refuse(ip, "per_ip_cap")
        all_full = self.total > 0 and self.open_total >= self.total
        if all_full and not self._evict_oldest_idle(self._all, "total_cap"):
            return self._refuse(ip, "total_cap")
        self._all[connection] = ip
        self._by_ip.setdefault(ip, {})[connection] = None
        OPEN_CONNECTIONS.inc()
        return True

    def release(self, connection: Connection) -> None:
        """Forgets `connection` (idempotent: an evicted one is released at eviction)."""
        ip = self._all.pop(connection, None)
        if ip is None:
            return
        OPEN_CONNECTIONS.dec()
        peers = self._by_ip[ip]
        del peers[connection]
        if not peers:
            del self._by_ip[ip]

    def _evict_oldest_idle(self, pool: dict[Connection, Any], reason: str) -> bool:
        # A scan, not an index: it stops at the first idle one, and a pool full of busy
        # connections is a pool of requests being served, each far costlier than this.
        victim = next((c for c in pool if c.idle), None)
        if victim is None:
            return False
        self.release(victim)
        self.evicted += 1
        CONNECTIONS_CLOSED.labels(f"evicted_{reason}").inc()
        victim.evict(reason)
        return True

    def _refuse(self, ip: str, reason: str) -> bool:
        self.refused += 1
        CONNECTIONS_CLOSED.labels(f"refused_{reason}").inc()
        log.warning("connection refused", reason=reason, peer=ip)
        return False


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, counted by a `ConnectionGuard` and with a deadline
    for each request head."""

    def __init__(
        self,
        manager: web.Server,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._admitted = False
        self._peer = ""

    @property
    def idle(self) -> bool:
        # aiohttp's own notion of idle (its keep-alive check): the request loop waits for the
        # next message. True from accept (once the loop started) and between requests, also
        # while a request head trickles in; never while a request is handled.
        # A connection on which no request head was ever parsed is idle too (its request loop
        # may not have started yet): closing it loses nothing.
        if self._messages:
            return False
        waiter = self._waiter
        return self._request_count == 0 or (waiter is not None and not waiter.done())

    def evict(self, reason: str) -> None:
        log.info("idle connection closed to make room", reason=reason, peer=self._peer)
        self._stop_header_deadline()
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._guard.admit(self, self._peer):
            # Not handed to aiohttp at all: no request loop, no registration with the server.
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSAL)
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        # The first request head is due within the header timeout of the accept.
        self._start_header_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._guard.release(self)
        self._stop_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if data and self._header_deadline is None and self.idle:
            # The first byte of a next request: its head is due within the timeout.
            self._start_header_deadline()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            # A complete request head arrived: from here on it is a request being handled.
            self._stop_header_deadline()

    def _start_header_deadline(self) -> None:
        self._header_deadline = self._loop.call_later(self._header_timeout, self._header_late)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_late(self) -> None:
        self._header_deadline = None
        CONNECTIONS_CLOSED.labels("header_timeout").inc()
        log.info("request head not received in time", peer=self._peer)
        self.force_close()


class GuardedServer(web.Server):
    """aiohttp's `web.Server` making `GuardedRequestHandler`s."""

    def __init__(
        self,
        handler: Any,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.guard = guard
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            guard=self.guard,
            header_timeout=self.header_timeout,
            loop=self._loop,
            **self._kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """A `web.AppRunner` whose server makes guarded connections. Pass `keepalive_timeout` (the
    idle timeout) like any other handler option."""

    def __init__(
        self,
        app: web.Application,
        *,
        guard: ConnectionGuard,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            guard=self.guard,
            header_timeout=self.header_timeout,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


def guarded_runner(
    *, per_ip: int, total: int, header_timeout: float, idle_timeout: float
) -> RunnerFactory:
    """A runner factory for `corral_common.serving.serve`."""

    def make(app: web.Application, **kwargs: Any) -> web.AppRunner:
        guard = ConnectionGuard(per_ip=per_ip, total=total_cap(total))
        log.info(
            "connection bounds",
            per_ip=guard.per_ip,
            total=guard.total,
            header_timeout_s=header_timeout,
            idle_timeout_s=idle_timeout,
        )
        return GuardedAppRunner(
            app,
            guard=guard,
            header_timeout=header_timeout,
            keepalive_timeout=idle_timeout,
            **kwargs,
        )

    return make
