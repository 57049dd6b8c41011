"""Loopback port allocation."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port the OS considers free on `host` right now.

    The port is released before returning, so another process may take it; callers bind it
    soon after, which is the usual trade-off for test infrastructure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if `port` can be bound on `host` (and on the wildcard address) right now."""
    for bind_host in (host, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Servers (Erlang, aiohttp) bind with SO_REUSEADDR, so lingering TIME_WAIT
            # connections must not make a port look taken; only a listener should.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((bind_host, port))
            except OSError:
                return False
    return True
