"""Secrets never shown: credentials in `CORRAL_OLLAMA_URL` (and the broker's URL) appear
in no /health, no error answer and no log line of any service.

A whole cluster is started with `CORRAL_OLLAMA_URL=http://admin:pw@127.0.0.1:<port>`, nothing
listening there, so every backend path fails and says where it tried; the logs run at DEBUG.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from tests.fixtures import start_cluster
from tests.polling import eventually

pytestmark = pytest.mark.e2e

PASSWORD = "pw"


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The secrets found in `text`: as a URL's password, or as a word of its own."""
    found = []
    for secret in secrets:
        if re.search(rf":{re.escape(secret)}@|\b{re.escape(secret)}\b", text):
            found.append(secret)
    return found


@dataclass(frozen=True)
class SecretCluster:
    cluster: Cluster
    logs: Path
    secrets: list[str]


@pytest.fixture
def secret_cluster(
    fresh_broker: Callable[[], str],
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SecretCluster]:
    amqp_url = fresh_broker()
    secrets = [PASSWORD]
    if urlsplit(amqp_url).password:
        secrets.append(str(urlsplit(amqp_url).password))
    ollama_url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    workdir = tmp_path_factory.mktemp("secrets")
    with start_cluster(
        amqp_url, ollama_url, workdir, mongo_url=mongo_url, CORRAL_STATUS_INTERVAL_S="0.5"
    ) as cluster:
        yield SecretCluster(cluster, workdir / "logs", secrets)


async def test_credentials_never_appear_in_health_errors_or_logs(
    secret_cluster: SecretCluster,
) -> None:
    cluster, secrets = secret_cluster.cluster, secret_cluster.secrets
    answers: list[tuple[str, int, str]] = []
    base = cluster.gateway_url
    async with aiohttp.ClientSession() as http:

        async def fetch(method: str, url: str, body: Any = None) -> tuple[int, str]:
            async with http.request(method, url, json=body) as response:
                text = await response.text()
            answers.append((url, response.status, text))
            return response.status, text

        # The scheduler's status (backend down, with its URL) has reached the gateway.
        async def backend_reported() -> bool:
            status, text = await fetch("GET", f"{base}/health")
            return status == 200 and '"connected":false' in text.replace(" ", "")

        await eventually(backend_reported, 20, "the backend reported down in /health")
        chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        status, text = await fetch("POST", f"{base}/api/chat", {**chat, "stream": False})
        assert status == 503, text
        assert "admin:***@127.0.0.1" in text  # where it tried, without the password
        status, _ = await fetch(
            "POST", f"{base}/api/chat", {**chat, "session_id": new_id(), "stream": False}
        )
        assert status == 503
        await fetch("POST", f"{base}/api/generate", {"model": "llama3.2", "prompt": "hi"})
        await fetch("GET", f"{base}/api/tags")
        await fetch("GET", f"{base}/api/ps")
        await fetch("POST", f"{base}/api/show", {"model": "llama3.2"})
        await fetch("POST", f"{base}/api/pull", {"model": "llama3.2", "stream": False})
        await fetch("GET", f"{base}/api/providers/ollama/models")
        await fetch("GET", f"{base}/v1/models")
        for name, service in cluster.services.items():
            if name != "gateway" and service.ready_url is not None:
                await fetch("GET", service.ready_url.removesuffix("/ready") + "/health")
    # Stopped first, so every line (shutdown included) is in the logs read below.
    cluster.stop_all()
    assert any(status >= 500 for _, status, _ in answers)
    for url, status, text in answers:
        assert not leaks(text, secrets), (url, status, text)
    logs = sorted(secret_cluster.logs.glob("*.log"))
    assert {p.stem for p in logs} >= {"gateway", "scheduler", "session-store", "model-manager"}
    for log in logs:
        text = log.read_text(errors="replace")
        assert text.strip(), f"{log.name} is empty"
        for line in text.splitlines():
            assert not leaks(line, secrets), (log.name, line)
