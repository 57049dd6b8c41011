from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path

import aio_pika
import pytest

from corral_devstack import rabbitmq
from corral_devstack.ports import free_port
from corral_devstack.rabbitmq import RabbitNode, _Ports, amqp_reachable


async def _round_trip(url: str, body: bytes) -> aio_pika.abc.AbstractIncomingMessage:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("devstack-test", durable=True)
        await queue.purge()
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue.name,
        )
        message = await queue.get(timeout=10, fail=True)
        assert message is not None
        await message.ack()
        return message


def _node_pids(node: RabbitNode) -> list[int]:
    """Processes carrying the node's name or epmd port, found independently of the library."""
    markers = {
        f"RABBITMQ_NODENAME={node.nodename}".encode(),
        f"ERL_EPMD_PORT={node.epmd_port}".encode(),
    }
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except (OSError, IndexError):
            continue
        if int(entry.name) != os.getpid() and env & markers:
            pids.append(int(entry.name))
    return pids


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_node_uses_its_own_loopback_ports(rabbit_node: RabbitNode) -> None:
    rabbit_node.start()
    assert rabbit_node.url == f"amqp://guest:guest@127.0.0.1:{rabbit_node.port}/"
    assert rabbit_node.nodename == f"corral{rabbit_node.port}@localhost"
    assert rabbit_node.dist_port == rabbit_node.port + 20000
    assert rabbit_node.port != 5672
    assert _listening(rabbit_node.port)
    assert _listening(rabbit_node.epmd_port)
    assert amqp_reachable(rabbit_node.url)
    assert not amqp_reachable(rabbit_node.url.replace("guest:guest", "guest:wrong"))
    assert not amqp_reachable(f"amqp://guest:guest@127.0.0.1:{free_port()}/", timeout=1)


def test_publish_and_consume(rabbit_node: RabbitNode) -> None:
    rabbit_node.start()
    message = asyncio.run(_round_trip(rabbit_node.url, b"hello"))
    assert message.body == b"hello"


async def test_reachable_from_inside_an_event_loop(rabbit_node: RabbitNode) -> None:
    rabbit_node.start()
    assert amqp_reachable(rabbit_node.url)


@pytest.mark.broker_restart
def test_restart_keeps_port_and_data(rabbit_node: RabbitNode) -> None:
    rabbit_node.start()
    port, pid_before = rabbit_node.port, rabbit_node.pid_file.read_text().strip()

    rabbit_node.restart()

    assert rabbit_node.port == port
    assert rabbit_node.pid_file.read_text().strip() != pid_before
    message = asyncio.run(_round_trip(rabbit_node.url, b"after restart"))
    assert message.body == b"after restart"


def test_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    # Take the AMQP port so the node dies while booting.
    ports = _Ports.allocate("127.0.0.1")
    (tmp_path / "ports.json").write_text(
        f'{{"amqp": {ports.amqp}, "dist": {ports.dist}, "epmd": {ports.epmd}}}'
    )
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.amqp))
        blocker.listen()
        node = RabbitNode(tmp_path)
        node._ports = ports  # skip the "saved ports must be free" check to force the clash
        with pytest.raises(RuntimeError):
            node.start(timeout=30)
    assert _node_pids(node) == []
    assert not _listening(ports.epmd)


@pytest.mark.devstack_stops_rabbit
def test_stop_leaves_no_process(rabbit_node: RabbitNode) -> None:
    rabbit_node.start()
    assert _node_pids(rabbit_node), "the check must see the running node's processes"

    started = time.monotonic()
    rabbit_node.stop()
    print(f"stop took {time.monotonic() - started:.1f}s")

    assert _node_pids(rabbit_node) == []
    assert not _listening(rabbit_node.port)
    assert not _listening(rabbit_node.epmd_port)
    assert not amqp_reachable(rabbit_node.url, timeout=1)
    rabbit_node.stop()  # idempotent


@pytest.mark.parametrize("install_works", [True, False])
def test_ensure_installed_uses_apt_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, install_works: bool
) -> None:
    server = tmp_path / "rabbitmq-server"
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        if argv[:2] == ["apt-get", "install"] and install_works:
            server.touch()
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(rabbitmq, "RABBITMQ_SERVER", server)
    monkeypatch.setattr(subprocess, "run", fake_run)
    if install_works:
        rabbitmq.ensure_rabbitmq_installed()
    else:
        with pytest.raises(rabbitmq.RabbitMQError, match="still missing"):
            rabbitmq.ensure_rabbitmq_installed()
    assert calls == [["apt-get", "update"], ["apt-get", "install", "-y", "rabbitmq-server"]]

    calls.clear()
    server.touch()
    rabbitmq.ensure_rabbitmq_installed()
    assert calls == []
