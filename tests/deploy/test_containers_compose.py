"""docker-compose.yml brought up for real: Compose v2 against Podman's socket, with
deploy/compose/local.yml swapping in the images built here (RabbitMQ from Debian, SecantusDB
and the Ollama emulator for MongoDB and Ollama) on host networking, every port on loopback.
A chat is answered through the gateway container with its session kept across turns and across
the loss of a scheduler; the stack is then taken down with its volumes, leaving nothing.
Behind the `containers` marker (`make check-deploy`)."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral_common.topology import JOBS_QUEUE
from corral_devstack.ports import free_port
from tests.deploy.conftest import (
    CONTAINER_TEST_TIMEOUT_S,
    ROOT,
    Images,
    Podman,
    record_timing,
    run,
)
from tests.polling import until

pytestmark = [pytest.mark.containers, pytest.mark.timeout(CONTAINER_TEST_TIMEOUT_S)]

LOCAL = ROOT / "deploy" / "compose" / "local.yml"
CORRAL = ("gateway", "scheduler", "scheduler-standby", "session-store", "model-manager")
PORTS = (
    "AMQP_PORT",
    "AMQP_DIST_PORT",
    "EPMD_PORT",
    "RABBITMQ_MANAGEMENT_PORT",
    "RABBITMQ_PROMETHEUS_PORT",
    "MONGO_PORT",
    "OLLAMA_PORT",
    "GATEWAY_PORT",
    "SCHEDULER_PORT",
    "SCHEDULER_STANDBY_PORT",
    "SESSION_STORE_PORT",
    "MODEL_MANAGER_PORT",
)


@dataclass
class Stack:
    compose: list[str]
    project: str
    env: dict[str, str]
    podman: Podman

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.env['LOCAL_GATEWAY_PORT']}"

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, *args], timeout=timeout, env=self.podman.env, cwd=ROOT)

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "30", timeout=60).stdout[-8000:]

    def request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        call = urllib.request.Request(
            self.gateway + path,
            data=data,
            headers={"Authorization": f"Bearer {self.env['CORRAL_ADMIN_KEY']}"},
        )
        try:
            with urllib.request.urlopen(call, timeout=30) as answer:
                return int(answer.status), json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)


@pytest.fixture
def stack(
    podman: Podman, corral_images: Images, compose_binary: Path, tmp_path: Path
) -> Iterator[Stack]:
    env = {f"LOCAL_{name}": str(free_port()) for name in PORTS}
    env |= {
        "RABBITMQ_USER": "corral",
        "RABBITMQ_PASSWORD": secrets.token_hex(12),
        "MONGO_USER": "corral",
        "MONGO_PASSWORD": secrets.token_hex(12),
        "CORRAL_ADMIN_KEY": secrets.token_hex(24),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(12),
    }
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    project = f"corral-check-{secrets.token_hex(3)}"
    compose = [str(compose_binary), "-p", project, "--env-file", str(env_file)]
    compose += ["-f", str(ROOT / "docker-compose.yml"), "-f", str(LOCAL)]
    up = Stack(compose, project, env, podman)
    started = time.monotonic()
    done = up("up", "--detach", "--pull", "never", "--no-build")
    record_timing("compose up", time.monotonic() - started)
    try:
        assert done.returncode == 0, done.stderr
        yield up
    finally:
        started = time.monotonic()
        down = up("down", "--volumes", "--timeout", "10")
        record_timing("compose down -v", time.monotonic() - started)
        assert down.returncode == 0, down.stderr
        # Nothing of the project is left: no container, no named volume.
        label = f"label=com.docker.compose.project={project}"
        assert podman.podman("ps", "-a", "--filter", label, "--quiet").stdout.strip() == ""
        assert podman.podman("volume", "ls", "--filter", label, "--quiet").stdout.strip() == ""


def test_compose_stack_answers_a_chat_with_its_session_kept(stack: Stack) -> None:
    started = time.monotonic()
    try:
        until(lambda: stack.request("/ready")[0] == 200, 180, "the gateway container ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from None
    record_timing("compose up to gateway /ready", time.monotonic() - started)

    def health() -> dict[str, Any]:
        status, body = stack.request("/health")
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    # Both schedulers report, the store writes, the backend answers.
    until(lambda: health()["schedulers"] == 2, 60, "both schedulers reporting")
    until(lambda: health()["store"]["state"] == "up", 60, "the session store up")
    body = health()
    assert body["standby"]["available"] is True
    assert body["ollama"]["connected"] is True

    def chat(content: str) -> dict[str, Any]:
        status, answer = stack.request(
            "/api/chat",
            {
                "model": "llama3.2",
                "stream": False,
                "session_id": "compose-check",
                "messages": [{"role": "user", "content": content}],
            },
        )
        assert status == 200, f"{answer}\n{stack.logs()}"
        assert isinstance(answer, dict)
        return answer

    first = chat("My name is Ada.")
    assert first["session_id"] == "compose-check"
    assert first["context_info"]["messages_used"] == 1
    second = chat("What is my name?")
    # The second turn was sent with the first (question and answer) before it.
    assert second["context_info"]["messages_used"] == 3
    status, history = stack.request("/sessions/compose-check/history")
    assert status == 200, history
    assert [m["content"] for m in history["messages"]][::2] == [
        "My name is Ada.",
        "What is my name?",
    ]

    # The broker runs with its management and Prometheus plugins.
    broker = f"http://127.0.0.1:{stack.env['LOCAL_RABBITMQ_PROMETHEUS_PORT']}/metrics"
    with urllib.request.urlopen(broker, timeout=10) as answer:
        assert b"rabbitmq_" in answer.read()
    credentials = f"{stack.env['RABBITMQ_USER']}:{stack.env['RABBITMQ_PASSWORD']}"
    queue_url = (
        f"http://127.0.0.1:{stack.env['LOCAL_RABBITMQ_MANAGEMENT_PORT']}"
        f"/api/queues/%2F/{JOBS_QUEUE}"
    )

    def jobs_queue() -> dict[str, Any]:
        call = urllib.request.Request(
            queue_url,
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
        )
        with urllib.request.urlopen(call, timeout=10) as answer:
            queue: dict[str, Any] = json.loads(answer.read())
            return queue

    # Both schedulers consume the jobs queue (the management API's statistics come every few
    # seconds); one of them is its single active consumer.
    until(lambda: jobs_queue().get("consumers") == 2, 60, "two consumers of the jobs queue")
    assert jobs_queue()["arguments"].get("x-single-active-consumer") is True

    # The image's HEALTHCHECK passes in every Corral container (Podman runs it on request).
    for service in CORRAL:
        check = stack.podman.podman("healthcheck", "run", stack.container(service))
        assert check.returncode == 0, f"{service}: {check.stdout}{check.stderr}"

    # One scheduler gone, whichever was active: the other serves the same session.
    stopped = stack("stop", "--timeout", "10", "scheduler")
    assert stopped.returncode == 0, stopped.stderr
    until(lambda: health()["schedulers"] == 1, 60, "the stopped scheduler missed")
    third = chat("And again?")
    assert third["context_info"]["messages_used"] == 5
