"""Keeps every waiting client informed of its position and estimated wait.

Woken whenever the lane moves (admission, start, finish, cancel); updates a job only when its
position or estimate changed meaningfully (up to 20th, every place; further back, once it fell by
a tenth), at most once per interval. The updates of one round
go out as one `Positions` message per gateway, which tells its own clients: position traffic
grows with the lane's changes and the gateways, not with the waiting clients.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from corral_common.messages import Position
from corral_scheduler.events import EventSink
from corral_scheduler.lane import Lane

# An estimate that moved less than this (and less than the relative threshold) is not news.
MIN_ESTIMATE_CHANGE_MS = 1000
MIN_ESTIMATE_CHANGE_RATIO = 0.2
# A place that fell by less than this share of itself (and by more than one) is not news.
POSITION_FALL = 10


class PositionBroadcaster:
    def __init__(self, lane: Lane, sink: EventSink, interval_s: float) -> None:
        self.lane = lane
        self.sink = sink
        self.interval_s = interval_s

    async def run_forever(self) -> None:
        moved = self.lane.moved
        while True:
            await moved.wait()
            moved.clear()
            await self.broadcast()
            # Coalesce bursts of lane movement into one round of updates per interval.
            await asyncio.sleep(self.interval_s)

    async def broadcast(self) -> None:
        now = time.monotonic()
        by_gateway: dict[str, list[Position]] = defaultdict(list)
        for placed in self.lane.snapshot():
            entry, position, wait_ms = placed.entry, placed.position, placed.wait_ms
            # Position 0 is announced by `started`, once the backend has accepted the job: a
            # head-of-lane job about to start must not make the gateway commit a 200 early.
            if (
                position == 0
                or not entry.job.queue_progress
                or not _is_news(entry.last_sent, position, wait_ms)
            ):
                continue
            entry.told(position, wait_ms, now)
            by_gateway[entry.job.gateway_id].append(
                Position(request_id=entry.request_id, position=position, estimated_wait_ms=wait_ms)
            )
        if by_gateway:
            await asyncio.gather(
                *(self.sink.send_positions(gw, updates) for gw, updates in by_gateway.items())
            )


def _is_news(last: tuple[int, int] | None, position: int, wait_ms: int) -> bool:
    if last is None or position > last[0]:
        return True
    if position < last[0]:
        # Near the front every place is news; further back, a tenth of it: a client 400th
        # hears every 40 places, so a lane of hundreds does not rewrite every waiting stream
        # each round (the relay's heartbeat counts its wait down in between).
        return last[0] - position >= max(1, last[0] // POSITION_FALL)
    change = abs(last[1] - wait_ms)
    return change >= MIN_ESTIMATE_CHANGE_MS and change >= MIN_ESTIMATE_CHANGE_RATIO * max(
        last[1], 1
    )
