"""Store tests run against a real MongoDB-protocol server: `mongo_url` (corral_devstack's
pytest plugin) is `CORRAL_MONGO_URL` when set, else a throwaway SecantusDB for the session.
Each test gets a database of its own, dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.ids import new_id
from corral_session_store.store import Document, SessionStore


@pytest.fixture
async def mongo(mongo_url: str) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000
    )
    yield client
    await client.close()


@pytest.fixture
async def database(mongo: AsyncMongoClient[Document]) -> AsyncIterator[AsyncDatabase[Document]]:
    """A database of the test's own, dropped afterwards."""
    name = f"corral_test_{new_id()[:12]}"
    yield mongo[name]
    await mongo.drop_database(name)


@pytest.fixture
async def store(database: AsyncDatabase[Document]) -> SessionStore:
    store = SessionStore(database)
    await store.ensure_indexes()
    return store
