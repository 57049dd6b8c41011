"""`make run` heals itself, with the real services: a Stack (emulator, embedded SecantusDB, two
schedulers, session store, model manager, gateway) is started in process and its supervisor run in
a thread, then the session store, the active scheduler, the gateway and the embedded store are
SIGKILLed one after another. Each comes back on its own ports, ready, and a session chat through
the gateway's fixed port works after each. A local RabbitMQ node (what `make run` starts when no
broker answers) is SIGKILLed under a supervisor of its own and comes back on its port."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from corral_devstack.ports import free_port
from corral_devstack.rabbitmq import RabbitNode, amqp_reachable
from corral_devstack.stack import Stack
from corral_devstack.supervisor import NodeChild, RestartPolicy, Supervisor
from corral_emulator import expected_reply

# Restarting a Python service takes a second or two on a loaded 2-core machine; this bounds a
# hang, not a budget.
RECOVERY_S = 45.0
CHAT_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def stack(rabbit_node: RabbitNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("healing")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    environ.update(
        CORRAL_AMQP_URL=rabbit_node.add_vhost("healing"),
        CORRAL_GATEWAY_PORT=str(free_port()),
        CORRAL_STATUS_INTERVAL_S="0.5",
        CORRAL_TAKEOVER_GRACE_S="0.2",
        CORRAL_LOG_LEVEL="DEBUG",
    )
    out = io.StringIO()
    policy = RestartPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    stack = Stack(data, emulator=True, environ=environ, out=out, err=out, policy=policy)
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        stack.start()
        watcher = threading.Thread(target=stack.supervisor.run_until, args=(stop,), daemon=True)
        watcher.start()
        yield stack
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(10)
        stack.stop()
        print(out.getvalue())


async def eventually(probe: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """tests/polling.py's bounded wait on a condition (that module is not importable from a
    workspace member's tests run on their own)."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what} did not happen within {within_s}s")
        await asyncio.sleep(0.05)


def gateway_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.environ['CORRAL_GATEWAY_PORT']}"


async def session_chat(stack: Stack, content: str) -> dict[str, Any]:
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": content}],
        "stream": False,
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHAT_TIMEOUT_S)) as session,
        session.post(
            f"{gateway_url(stack)}/api/chat", json=body, headers={"X-Session-Id": "healing"}
        ) as response,
    ):
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    assert answer["message"]["content"] == expected_reply(content)
    return answer


async def recovered(stack: Stack, name: str, restarts: int) -> float:
    """Wait until `name` has been restarted `restarts` times in all and every child runs."""

    async def probe() -> bool:
        history = [r for r in stack.supervisor.history if r.name == name]
        return (
            len(history) == restarts
            and history[-1].recovered_in_s is not None
            and stack.supervisor.all_running()
        )

    await eventually(probe, RECOVERY_S, f"{name} restarted and ready")
    record = [r for r in stack.supervisor.history if r.name == name][-1]
    assert record.exit_code is not None
    assert record.recovered_in_s is not None
    print(f"[healing] {name}: exit {record.exit_code}, ready in {record.recovered_in_s:.2f}s")
    return record.recovered_in_s


def kill(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)


async def test_killed_parts_come_back_and_chats_work(stack: Stack) -> None:
    await session_chat(stack, "before anything")
    ports = {p.name: p.env.get("CORRAL_HEALTH_PORT") for p in stack.processes}

    kill(stack.process("session-store").pid)
    await recovered(stack, "session-store", 1)
    await session_chat(stack, "after the session store")

    kill(stack.process("scheduler").pid)
    # The standby takes the lane at once; the killed one comes back as the new standby.
    await session_chat(stack, "while the scheduler restarts")
    await recovered(stack, "scheduler", 1)
    await session_chat(stack, "after the scheduler")

    kill(stack.process("gateway").pid)
    await recovered(stack, "gateway", 1)
    await session_chat(stack, "after the gateway")

    assert stack.mongo is not None
    kill(stack.mongo.pid)
    await recovered(stack, "mongo", 1)
    answer = await session_chat(stack, "after the store")
    # Everything the session held survived: five turns before this one.
    assert answer["context_info"]["messages_used"] >= 10, answer["context_info"]

    assert {p.name: p.env.get("CORRAL_HEALTH_PORT") for p in stack.processes} == ports
    assert stack.supervisor.summary() == (
        "4 restarts (gateway 1, mongo 1, scheduler 1, session-store 1)"
    )


async def test_a_killed_local_rabbitmq_node_is_restarted_on_its_ports() -> None:
    """The node `make run` starts when no broker answers: SIGKILLed (its whole process group, as
    the OOM killer or a crash would leave it), it is cleaned up and started again on the same
    port and data, so the services' robust connections find it again."""
    out = io.StringIO()
    node = RabbitNode()
    supervisor = Supervisor(RestartPolicy(initial_backoff_s=0.1), out=out, err=out)
    try:
        await asyncio.to_thread(node.start)
        url = node.url
        supervisor.watch(NodeChild("rabbitmq", node, node.log_dir / f"{node.nodename}.log"))
        assert node.pid is not None
        os.killpg(node.pid, signal.SIGKILL)

        async def back() -> bool:
            await asyncio.to_thread(supervisor.poll)
            return supervisor.all_running() and bool(supervisor.history)

        await eventually(back, RECOVERY_S, "the node restarted")
        assert node.url == url
        assert await asyncio.to_thread(amqp_reachable, url)
        record = supervisor.history[0]
        assert record.recovered_in_s is not None
        print(f"[healing] rabbitmq: exit {record.exit_code}, ready in {record.recovered_in_s:.2f}s")
    finally:
        await asyncio.to_thread(node.close)
    assert "rabbitmq       exited with" in out.getvalue()
    assert "ready again" in out.getvalue()
