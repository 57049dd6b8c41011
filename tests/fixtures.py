"""Fixtures for cross-service tests (a pytest plugin: the root conftest.py loads it for every
test directory): the Ollama emulator and Corral services as real processes,
over a real RabbitMQ (`amqp_url` comes from corral_devstack's pytest plugin: `CORRAL_AMQP_URL`
when set, otherwise a throwaway node started for the session)."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import aio_pika
import pytest

from corral_common.topology import JOBS_QUEUE
from corral_devstack.cluster import Cluster
from corral_devstack.ports import free_port
from corral_devstack.processes import ServiceProcess
from corral_devstack.rabbitmq import RabbitNode
from corral_emulator import EmulatorControl


@dataclass(frozen=True)
class Emulator:
    url: str
    process: ServiceProcess


def start_emulator(log_dir: Path, name: str = "emulator") -> Emulator:
    """An Ollama emulator as a process of its own, on a free loopback port, ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ServiceProcess(
        name,
        [sys.executable, "-m", "corral_emulator", "--host", "127.0.0.1", "--port", str(port)],
        {},
        f"{url}/api/version",
        log_dir / f"{name}.log",
    )
    process.start()
    process.wait_ready(30)
    return Emulator(url, process)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_emulator(tmp_path_factory.mktemp("emulator"))
    yield emulator
    emulator.process.stop()


@pytest.fixture
async def emu(emulator: Emulator) -> AsyncIterator[EmulatorControl]:
    """The emulator's control API, reset to defaults (no delay, no failures) for each test."""
    async with EmulatorControl(emulator.url) as control:
        await control.reset()
        await control.configure(token_delay_ms=0, load_ms=0, prompt_ms_per_token=0)
        yield control
        await control.release()


@pytest.fixture(scope="session")
def fresh_broker(request: pytest.FixtureRequest, amqp_url: str) -> Callable[[], str]:
    """Gives each cluster a broker of its own: a new virtual host on the session's throwaway node,
    so clusters never share the jobs queue (one scheduler would serve another's gateway). With an
    external broker (`CORRAL_AMQP_URL`) clusters share it, and the jobs queue is purged instead."""
    if os.environ.get("CORRAL_AMQP_URL"):
        return lambda: amqp_url
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    names = itertools.count(1)
    return lambda: node.add_vhost(f"cluster{next(names)}")


def purge_jobs(amqp_url: str) -> None:
    """Start each cluster on an empty jobs queue, whatever an earlier failed test left behind.
    Only an existing queue is purged: declaring it here would fix its arguments before the
    cluster's own settings could."""

    async def purge() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(JOBS_QUEUE, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return
            await queue.purge()

    asyncio.run(purge())


NO_RATE_LIMITS = {
    "CORRAL_RATE_LIMIT_PER_MINUTE": "0",
    "CORRAL_ANONYMOUS_RATE_LIMIT_PER_MINUTE": "0",
    "CORRAL_AUTH_FAILURES_PER_MINUTE": "0",
}


def start_cluster(
    amqp_url: str, ollama_url: str, workdir: Path, *, mongo_url: str | None = None, **env: str
) -> Cluster:
    """A scheduler and a gateway; with `mongo_url`, the whole cluster: a model manager and a
    session store too (in a database of its own, so clusters never see each other's sessions).

    Rate limits are off unless `env` sets them: the suite sends hundreds of requests from
    127.0.0.1, which the defaults would throttle (tests/e2e/test_identity.py tests them)."""
    purge_jobs(amqp_url)
    cluster = Cluster(amqp_url, ollama_url, workdir, extra_env={**NO_RATE_LIMITS, **env})
    # Each service needs only the broker (and the store its database), so they start together
    # and are waited for together: one start's time, not four in a row.
    cluster.start_scheduler(wait=False)
    if mongo_url is not None:
        cluster.start_health_service("corral_model_manager", "model-manager", wait=False)
        cluster.start_health_service(
            "corral_session_store",
            "session-store",
            wait=False,
            CORRAL_MONGO_URL=mongo_url,
            CORRAL_MONGO_DATABASE=f"corral_{workdir.name}",
        )
    cluster.start_gateway(wait=False)
    for service in cluster.services.values():
        service.wait_ready(cluster.ready_timeout)
    return cluster


ClusterFactory = Callable[..., Cluster]


class TakeoverEnv(TypedDict):
    """The settings of a cluster with standby schedulers, typed so that they can be passed to
    `Cluster.start_scheduler` as keywords: how often each says its status, and how long a new
    holder of the lane waits before taking it over."""

    CORRAL_STATUS_INTERVAL_S: str
    CORRAL_TAKEOVER_GRACE_S: str


@pytest.fixture(scope="session")
def new_cluster(
    fresh_broker: Callable[[], str],
    emulator: Emulator,
    mongo_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> ClusterFactory:
    """Starts a cluster of its own (broker vhost, work dir) in front of the emulator (or
    `backend_url`): a scheduler and a gateway, plus the model manager and session store with
    `whole=True` (on the session's store, or `store_url`). Use it as a context manager; leaving
    stops every service."""

    def start(
        name: str,
        *,
        whole: bool = False,
        backend_url: str | None = None,
        store_url: str | None = None,
        **env: str,
    ) -> Cluster:
        return start_cluster(
            fresh_broker(),
            backend_url or emulator.url,
            tmp_path_factory.mktemp(name),
            mongo_url=(store_url or mongo_url) if whole else None,
            **env,
        )

    return start


@pytest.fixture(scope="module")
def cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    """The whole cluster in front of the emulator, shared by a test module."""
    with new_cluster(
        "cluster", whole=True, CORRAL_HEARTBEAT_S="1", CORRAL_STATUS_INTERVAL_S="0.5"
    ) as cluster:
        yield cluster
