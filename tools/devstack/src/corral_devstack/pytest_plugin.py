"""Pytest fixtures for a broker, loaded in every test session through the `pytest11` entry point.

`amqp_url` is the broker for integration tests: `CORRAL_AMQP_URL` when set, else the URL of
one throwaway node shared by the whole session (`rabbit_node`), started on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from corral_devstack.rabbitmq import RabbitNode

EXTERNAL_BROKER_ENV = "CORRAL_AMQP_URL"


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """The session's own RabbitMQ node (started on first use, even when an external broker is
    given, because some tests stop or restart it)."""
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    external = os.environ.get(EXTERNAL_BROKER_ENV)
    if external:
        return external
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    return node.url
