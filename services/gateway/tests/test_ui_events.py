"""The operator's page in process (no browser): its files, open to anyone and locked to their own
origin; `GET /admin/lane/events` behind admin access with auth on (401 without a key, 403 with a
user key), answered as one JSON snapshot or, asked for `text/event-stream`, as a stream that
sends a new snapshot when a scheduler's status or one of this gateway's final events arrives;
and the snapshot's parts (recent requests, tokens per second, per-caller counts, pool servers)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web
from pytest_aiohttp import AiohttpClient

from corral_common.api_keys import display_prefix, generate_key, key_hash
from corral_common.messages import (
    BackendStatus,
    Done,
    Failed,
    LaneEntry,
    Position,
    QueueStatus,
    SchedulerStatus,
    ServerStatus,
    Started,
    Tokens,
)
from corral_common.status_board import StatusBoard
from corral_gateway import admin, ui
from corral_gateway.app import edge_middlewares
from corral_gateway.hub import Hub
from corral_gateway.identity.gate import GATEKEEPER, Gatekeeper
from corral_gateway.settings import GatewaySettings
from corral_gateway.surfaces import ADMIN
from corral_gateway.ui import page_routes
from corral_gateway.ui.lane_feed import FEED, LaneFeed, close_feed
from corral_gateway.ui.recent import RECENT_KEPT, Finished, RecentRequests
from corral_gateway.ui.snapshot import lane_snapshot
from corral_gateway.ui.throughput import SERIES_S, Throughput

OPERATOR_KEY = "k" * 32
ADMIN_KEY = {"Authorization": f"Bearer {OPERATOR_KEY}"}
STREAM = {"Accept": "text/event-stream"}
EVENT_WITHIN_S = 5.0


def entry(request_id: str, position: int, owner: str = "alice", **fields: Any) -> LaneEntry:
    return LaneEntry(
        request_id=request_id,
        kind="chat",
        model="llama3.2",
        position=position,
        estimated_wait_ms=1000 * position,
        waited_ms=10,
        owner=owner,
        client_key=owner,
        **fields,
    )


def status(*lane: LaneEntry, paused: bool = False, **fields: Any) -> SchedulerStatus:
    return SchedulerStatus(
        scheduler_id="s1",
        sent_at=time.time(),
        backend=BackendStatus(url="http://backend", connected=True, version="0.9.0"),
        queue=QueueStatus(
            waiting=sum(1 for e in lane if e.position > 0),
            running=sum(1 for e in lane if e.position == 0),
            average_wait_ms=0,
            processing_rate=0.0,
        ),
        lane=list(lane),
        paused=paused,
        **fields,
    )


@pytest.fixture
def feed() -> LaneFeed:
    feed = LaneFeed()
    feed.attach(StatusBoard(10.0), "gw1")
    return feed


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, directory: Any, clock: Any, feed: LaneFeed) -> Any:
    settings = GatewaySettings(auth="on", admin_key=OPERATOR_KEY)
    app = web.Application(middlewares=edge_middlewares(settings))
    app[GATEKEEPER] = Gatekeeper(settings, directory, wall=clock, spawn=lambda audit: audit.close())
    app[FEED] = feed
    # As the gateway registers them: the lane's own routes first (POST /admin/lane/{action}).
    admin.add_routes(app.router)
    page_routes.add_routes(app.router)
    ADMIN.add(app.router, *ui.ROUTES)
    app.on_shutdown.append(close_feed)
    return await aiohttp_client(app)


async def next_event(response: ClientResponse) -> dict[str, Any]:
    """The next `lane` event's data (keep-alive comments passed over)."""
    async with asyncio.timeout(EVENT_WITHIN_S):
        while True:
            block = await response.content.readuntil(b"\n\n")
            if block.startswith(b"event: lane\n"):
                data: dict[str, Any] = orjson.loads(block.split(b"data: ", 1)[1])
                return data


# -- access --------------------------------------------------------------------------------


async def test_the_lane_events_need_an_admin_key(client: Any, directory: Any) -> None:
    user_key = generate_key()
    directory.add_key(key_hash(user_key), prefix=display_prefix(user_key), owner="alice")
    for headers in ({}, STREAM):
        anonymous = await client.get("/admin/lane/events", headers=headers)
        assert anonymous.status == 401
        assert (await anonymous.json())["error"]["type"] == "unauthorized"
        user = await client.get(
            "/admin/lane/events", headers={**headers, "Authorization": f"Bearer {user_key}"}
        )
        assert user.status == 403
        assert (await user.json())["error"]["type"] == "forbidden"
    answer = await client.get("/admin/lane/events", headers=ADMIN_KEY)
    assert answer.status == 200
    assert answer.content_type == "application/json"
    snapshot = await answer.json()
    assert snapshot["running"] == snapshot["waiting"] == snapshot["schedulers"] == []


async def test_the_page_is_open_and_loads_nothing_from_elsewhere(client: Any) -> None:
    moved = await client.get("/ui", allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == "/ui/"
    page = await client.get("/ui/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert 'src="app.js"' in html and 'href="style.css"' in html
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = await client.get(f"/ui/{name}")
        assert answer.status == 200, name
        assert answer.content_type == kind
        text = await answer.text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    assert (await client.get("/ui/missing.js")).status == 404
    assert (await client.get("/ui/..%2Fapp.py")).status == 404


# -- the stream ----------------------------------------------------------------------------


async def test_the_stream_sends_the_lane_as_it_moves(client: Any, feed: LaneFeed) -> None:
    assert feed.board is not None
    feed.board.update(status(entry("r1", 0), entry("r2", 1), entry("r3", 2, owner="bob")))
    watcher = asyncio.create_task(feed.watch_board())
    try:
        response = await client.get("/admin/lane/events", headers={**ADMIN_KEY, **STREAM})
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        first = await next_event(response)
        assert [e["request_id"] for e in first["running"]] == ["r1"]
        assert [(e["request_id"], e["position"]) for e in first["waiting"]] == [
            ("r2", 1),
            ("r3", 2),
        ]
        assert first["callers"] == [
            {"caller": "alice", "running": 1, "waiting": 1},
            {"caller": "bob", "running": 0, "waiting": 1},
        ]

        # r1 finishes here (its final event), the lane moves up and is paused.
        feed.take(done("r1", eval_count=40, eval_duration=2_000_000_000))
        feed.board.update(status(entry("r2", 0), entry("r3", 1, owner="bob"), paused=True))
        while True:
            moved = await next_event(response)
            if moved["paused"]:
                break
        assert [e["request_id"] for e in moved["running"]] == ["r2"]
        assert [(e["request_id"], e["position"]) for e in moved["waiting"]] == [("r3", 1)]
        [finished] = moved["recent"]
        assert finished["request_id"] == "r1"
        assert (finished["status"], finished["tokens"], finished["tokens_per_s"]) == (200, 40, 20)
        assert finished["model"] == "llama3.2"
        assert 0 <= finished["latency_ms"] < 60_000

        # A failure of r2 is named with the model its lane entry had.
        feed.take(failed("r2"))
        failure = await next_event(response)
        assert failure["recent"][0]["request_id"] == "r2"
        assert (failure["recent"][0]["model"], failure["recent"][0]["status"]) == (
            "llama3.2",
            503,
        )
    finally:
        watcher.cancel()


async def test_a_stream_ends_when_the_gateway_stops(client: Any, feed: LaneFeed) -> None:
    response = await client.get("/admin/lane/events", headers={**ADMIN_KEY, **STREAM})
    await next_event(response)
    feed.close()
    async with asyncio.timeout(EVENT_WITHIN_S):
        assert await response.content.read() == b""


async def test_a_status_already_stale_wakes_the_watcher_once(feed: LaneFeed) -> None:
    assert feed.board is not None
    old = status(entry("r1", 0)).model_copy(update={"sent_at": time.time() - 100})
    feed.board.update(old)
    version = feed.version
    moment = await feed.board_round(0.0)
    # Not news (the board does not count it), and the next round waits past it.
    assert feed.version == version
    assert moment > old.sent_at
    fresh = status(entry("r2", 0))
    feed.board.update(fresh)
    moment = await feed.board_round(moment)
    assert feed.version == version + 1
    assert moment == pytest.approx(fresh.sent_at + 1e-6)


async def test_tokens_are_counted_only_while_a_page_watches() -> None:
    feed = LaneFeed()
    feed.attach(StatusBoard(10.0), "gw1")
    feed.take(Tokens(request_id="r1", seq=0, chunks=[{"a": 1}]))
    assert feed.throughput.running("r1") is None
    async with feed.watching():
        feed.take(Tokens(request_id="r1", seq=1, chunks=[{"a": 1}, {"a": 2}]))
    assert feed.throughput.running("r1") is not None


async def test_the_feed_reads_the_hubs_events_in_process() -> None:
    """No broker queue of its own: the hub hands it every event of this gateway's jobs."""
    hub = Hub(StatusBoard(10.0), lambda _: None, gateway_id="gw1")
    feed = LaneFeed()
    feed.attach(hub.status, "gw1")
    hub.observe(feed.take)
    await hub.on_message(Message("gw.gw1.r1.done", done("r1").model_dump_json().encode()))  # type: ignore[arg-type]
    assert [r["request_id"] for r in feed.recent.listing()] == ["r1"]


@dataclass
class Message:
    routing_key: str
    body: bytes


# -- the snapshot's parts ---------------------------------------------------------------------


def done(request_id: str, **final: Any) -> Done:
    return Done(
        request_id=request_id,
        token_batches=1,
        final={"done": True, **final},
        text="",
        enqueued_at=time.time() - 3,
        waited_ms=1000,
        model="llama3.2",
        owner="alice",
    )


def failed(request_id: str) -> Failed:
    return Failed(
        request_id=request_id, status=503, error_type="backend_unavailable", message="down"
    )


def test_running_requests_get_their_rate_and_the_series_counts_each_second() -> None:
    now = [1000.0]
    throughput = Throughput(lambda: now[0])
    throughput.tokens("r1", 5)
    assert throughput.running("r1") is not None
    assert throughput.running("r1").rate() is None  # type: ignore[union-attr]
    for _ in range(4):
        now[0] += 0.5
        throughput.tokens("r1", 5)
    assert throughput.running("r1").rate() == pytest.approx(10.0)  # type: ignore[union-attr]
    now[0] = 1003.0
    series = throughput.series()
    assert len(series) == SERIES_S
    assert series[-3:] == [5 + 5, 5 + 5, 5]
    finished = throughput.finish("r1")
    assert finished is not None and finished.tokens == 25
    assert throughput.running("r1") is None
    now[0] = 1003.0 + SERIES_S + 1
    assert not any(throughput.series())


def test_the_recent_requests_keep_the_newest() -> None:
    recent = RecentRequests()
    for n in range(RECENT_KEPT + 5):
        recent.add(Finished(f"r{n}", "m", "done", 200, finished_at=float(n)))
    listed = recent.listing()
    assert len(listed) == RECENT_KEPT
    assert listed[0]["request_id"] == f"r{RECENT_KEPT + 4}"
    assert listed[-1]["request_id"] == "r5"


def test_a_pool_shows_each_server_and_what_runs_on_it() -> None:
    servers = [
        ServerStatus(
            name="a", url="http://a", connected=True, running="r1", loaded_model="llama3.2"
        ),
        ServerStatus(name="b", url="http://b", connected=True, running="r2", loaded_model="qwen"),
        ServerStatus(name="c", url="http://c", connected=False, in_rotation=False),
    ]
    pool = status(entry("r1", 0, server="a"), entry("r2", 0, server="b"), servers=servers)
    throughput = Throughput()
    throughput.tokens("r1", 3)
    snapshot = lane_snapshot([pool], RecentRequests(), throughput)
    assert [(s["name"], s["running"], s["in_rotation"]) for s in snapshot["servers"]] == [
        ("a", "r1", True),
        ("b", "r2", True),
        ("c", None, False),
    ]
    assert [(e["request_id"], e["server"], e["tokens"]) for e in snapshot["running"]] == [
        ("r1", "a", 3),
        ("r2", "b", None),
    ]
    assert {m["model"]: m["loaded_on"] for m in snapshot["models"]} == {
        "llama3.2": ["a"],
        "qwen": ["b"],
    }


def test_events_other_than_final_ones_and_tokens_are_not_recorded(feed: LaneFeed) -> None:
    feed.take(Position(request_id="r1", position=2, estimated_wait_ms=10))
    feed.take(Started(request_id="r1", waited_ms=5))
    assert len(feed.recent) == 0
