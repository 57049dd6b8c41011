"""Searches cannot starve chats: heavy `/api/search` load over a large store must not
make session chats fail.

The store is filled directly in MongoDB (20,000 turns in 200 sessions, quick with
`insert_many`), then 30 callers search for text nothing contains (every search scans) over
and over while 10 session chats run. Every chat must succeed; every search is answered 200, or
refused at once with 429/503, `Retry-After` and Corral's error shape, never a 500.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from corral_common.ids import new_id
from corral_devstack.cluster import Cluster
from corral_emulator import EmulatorControl, expected_reply
from tests.fixtures import ClusterFactory

pytestmark = pytest.mark.e2e

TURNS = 20_000
SESSIONS = 200
SEARCHERS = 30
CHATS = 10
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 8


@pytest.fixture(scope="module")
def loaded_cluster(new_cluster: ClusterFactory) -> Iterator[Cluster]:
    with new_cluster("searchload", whole=True) as cluster:
        yield cluster


async def fill_store(mongo_url: str, database: str) -> list[str]:
    """TURNS turns spread over SESSIONS sessions, written as the store writes them."""
    now = datetime.now(UTC)
    session_ids = [new_id() for _ in range(SESSIONS)]
    per_session = TURNS // SESSIONS
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[database]
        await db["sessions"].insert_many(
            [
                {
                    "_id": sid,
                    "title": f"session {n}",
                    "owner": None,
                    "created_at": now,
                    "last_activity": now,
                    "turn_seq": per_session,
                    "models": ["llama3.2"],
                }
                for n, sid in enumerate(session_ids)
            ]
        )
        turns: list[dict[str, Any]] = [
            {
                "_id": new_id(),
                "session_id": sid,
                "model": "llama3.2",
                "kind": "chat",
                "seq": seq,
                "messages": [
                    {"role": "user", "content": f"question {seq} {FILLER}"},
                    {"role": "assistant", "content": f"answer {seq} {FILLER}"},
                ],
                "message_count": 2,
                "owner": None,
                "asked_at": now,
                "answered_at": now,
                "stored_at": now,
                "stats": {},
            }
            for sid in session_ids
            for seq in range(1, per_session + 1)
        ]
        for start in range(0, len(turns), 2_000):
            await db["turns"].insert_many(turns[start : start + 2_000])
    finally:
        await client.close()
    return session_ids


async def test_searches_do_not_starve_session_chats(
    loaded_cluster: Cluster, mongo_url: str, emu: EmulatorControl
) -> None:
    sessions = await fill_store(mongo_url, f"corral_{loaded_cluster.workdir.name}")
    url = loaded_cluster.gateway_url
    stop = asyncio.Event()
    answers: Counter[int] = Counter()
    partial = 0
    bad: list[tuple[int, dict[str, str], Any]] = []

    async def searcher(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal partial
        # Each searcher is a caller of its own, as distinct clients would be.
        headers = {"X-Client-Id": f"searcher-{n}"}
        while not stop.is_set():
            async with http.get(
                f"{url}/api/search", params={"q": "text nobody wrote"}, headers=headers
            ) as response:
                body = await response.json()
                answers[response.status] += 1
                partial += bool(response.status == 200 and body.get("partial"))
                refused = response.status in (429, 503)
                if response.status != 200 and not (
                    refused
                    and "Retry-After" in response.headers
                    and set(body.get("error", {})) >= {"type", "message"}
                ):
                    bad.append((response.status, dict(response.headers), body))
                if refused:
                    # Do as a client told to retry later does, so the load stays on the store.
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)

    async def chat(http: aiohttp.ClientSession, session_id: str) -> tuple[int, Any]:
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": f"hello {session_id}"}],
            "stream": False,
        }
        async with http.post(
            f"{url}/api/chat", json=body, headers={"X-Session-Id": session_id}
        ) as response:
            return response.status, await response.json()

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        searchers = [asyncio.create_task(searcher(http, n)) for n in range(SEARCHERS)]
        try:
            chats = await asyncio.gather(*(chat(http, sid) for sid in sessions[:CHATS]))
        finally:
            stop.set()
            await asyncio.gather(*searchers, return_exceptions=True)

    succeeded = sum(1 for status, _ in chats if status == 200)
    print(
        f"[search load] chats succeeded under search load: {succeeded}/{CHATS}; "
        f"search answers by status: {dict(sorted(answers.items()))} "
        f"({partial} of the 200s partial, stopped by the time limit)"
    )
    assert [status for status, _ in chats] == [200] * CHATS, [b for s, b in chats if s != 200]
    for (_, answer), sid in zip(chats, sessions[:CHATS], strict=True):
        assert answer["message"]["content"] == expected_reply(f"hello {sid}")
    assert not bad, bad[:3]
    assert answers[200] > 0
