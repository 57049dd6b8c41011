"""Pytest fixtures for a broker and a database, loaded in every test session through the
`pytest11` entry point.

`amqp_url` is the broker for integration tests: `CORRAL_AMQP_URL` when set, else the URL of
one throwaway node shared by the whole session (`rabbit_node`), started on first use.
`mongo_url` is the MongoDB-protocol server: `CORRAL_MONGO_URL` when set, else a throwaway
in-memory SecantusDB shared by the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from corral_devstack.mongo import SecantusNode
from corral_devstack.rabbitmq import RabbitNode

EXTERNAL_BROKER_ENV = "CORRAL_AMQP_URL"


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[RabbitNode]:
    """The session's own RabbitMQ node (started on first use, even when an external broker is
    given, because some tests stop or restart it)."""
    with RabbitNode() as node:
        yield node


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    external = os.environ.get(EXTERNAL_BROKER_ENV)
    if external:
        return external
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    return node.url


EXTERNAL_MONGO_ENV = "CORRAL_MONGO_URL"


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """A MongoDB-protocol server for the session: `CORRAL_MONGO_URL` when set (a real MongoDB,
    say), else a throwaway in-memory SecantusDB started on first use. Tests share it and keep
    apart by database name."""
    external = os.environ.get(EXTERNAL_MONGO_ENV)
    if external:
        yield external
        return
    node = SecantusNode()
    try:
        node.start()
        yield node.url
    finally:
        node.close()
