"""Sessions survive a restart of the database server (SecantusDB with a storage directory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymongo import AsyncMongoClient

from corral_devstack.mongo import SecantusNode
from corral_session_store.store import Document, SessionStore, TurnRecord, WriteOutcome, utcnow


async def test_turns_survive_a_secantusdb_restart(tmp_path: Path) -> None:
    node = SecantusNode(tmp_path / "mongo")
    await asyncio.to_thread(node.start)
    try:
        now = utcnow()
        turn = TurnRecord(
            request_id="r1",
            session_id="durable",
            model="m",
            kind="chat",
            messages=[
                {"role": "user", "content": "My name is Alice"},
                {"role": "assistant", "content": "Hello Alice"},
            ],
            asked_at=now,
            answered_at=now,
        )
        client: AsyncMongoClient[Document] = AsyncMongoClient(node.url, tz_aware=True)
        store = SessionStore(client["corral"])
        await store.ensure_indexes()
        assert await store.write_turn(turn) is WriteOutcome.STORED
        await client.close()

        await asyncio.to_thread(node.restart)

        client = AsyncMongoClient(node.url, tz_aware=True)
        store = SessionStore(client["corral"])
        await store.ensure_indexes()
        history = await store.history("durable")
        assert [m["content"] for m in history["messages"]] == ["My name is Alice", "Hello Alice"]
        # Idempotency holds across the restart too: the unique _id is on disk.
        assert await store.write_turn(turn) is WriteOutcome.DUPLICATE
        await client.close()
    finally:
        await asyncio.to_thread(node.close)
