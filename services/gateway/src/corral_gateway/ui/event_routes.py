"""`GET /admin/lane/events`: the lane as the operator's page sees it.

Asked with `Accept: text/event-stream` (what the page sends), it is a stream of server-sent
events: a `lane` event with the whole snapshot (`snapshot.lane_snapshot`) at once, then again
whenever it changes: a scheduler's status arrives (each lane change makes one, and a scheduler
says its status every few seconds anyway), one of this gateway's requests finishes, or, while a
job runs or tokens flowed lately, every second (tokens per second); at most one per MIN_GAP_S,
so a burst of changes is sent as the lane stands after it. A quiet stream gets an SSE
comment every HEARTBEAT_S, which also notices a page that has gone. Asked otherwise, it answers
the one snapshot as JSON (scripts, and clients that read a whole answer).

Admin access with auth on, like the rest of the lane's routes; the page sends its key in a
header (fetch, not EventSource, which cannot send one).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_gateway.encoders import EVENT_STREAM
from corral_gateway.responses import json_response
from corral_gateway.ui.lane_feed import FEED, LaneFeed
from corral_gateway.ui.snapshot import lane_snapshot

HEARTBEAT_S = 15.0
# While the lane moves, a snapshot every TICK_S at least, for the tokens per second.
TICK_S = 1.0
# Snapshots at most this often: a burst of lane changes (a hundred requests arriving) is sent
# as the lane stands after it, not as a hundred snapshots.
MIN_GAP_S = 0.2


def _snapshot(feed: LaneFeed) -> dict[str, Any]:
    return lane_snapshot(feed.statuses(), feed.recent, feed.throughput)


def _moving(snapshot: dict[str, Any]) -> bool:
    return bool(snapshot["running"]) or any(snapshot["throughput"]["series"])


async def lane_events(request: web.Request) -> web.StreamResponse:
    """The lane's snapshot (running and waiting jobs, per caller, servers, models, recent
    requests, tokens per second); with `Accept: text/event-stream`, a stream of them."""
    feed = request.app[FEED]
    if EVENT_STREAM not in request.headers.get("Accept", ""):
        return json_response(_snapshot(feed), 200)
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-cache",
            # nginx and its kind would hold the events back otherwise.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sent: bytes | None = None
    sent_at = 0.0
    version = feed.version
    async with feed.watching():
        while not feed.closed:
            gap = sent_at + MIN_GAP_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            snapshot = _snapshot(feed)
            body = jsonutil.dumps(snapshot)
            try:
                if body != sent:
                    await response.write(b"event: lane\ndata: " + body + b"\n\n")
                    sent, sent_at = body, time.monotonic()
                else:
                    await response.write(b": keep-alive\n\n")
            except ConnectionError:
                return response  # the page went away
            wait_s = TICK_S if _moving(snapshot) else HEARTBEAT_S
            version = await feed.next_change(version, wait_s)
    return response
