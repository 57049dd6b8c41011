from __future__ import annotations

import socket

from corral_devstack.ports import free_port, port_is_free


def test_free_port_is_bindable_and_then_taken() -> None:
    port = free_port()
    assert 1024 < port <= 65535
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
