"""What the operator's page is fed: the schedulers' statuses as this gateway holds them (the
hub's status board), this gateway's recent requests (`recent.py`) and tokens per second
(`throughput.py`), and a change signal the page's event streams wait on.

It watches the hub's status board through its public wait (`StatusBoard.newer_than`), and it
reads this gateway's job events as the hub receives them (`Hub.observe`), in process: it costs
no broker message. Token events are counted only while a page is watching (`watching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from corral_common.messages import (
    CANCELED_STATUS,
    Cancelled,
    Done,
    Event,
    Failed,
    SchedulerStatus,
    Tokens,
)
from corral_common.status_board import StatusBoard
from corral_common.supervision import Task, supervised
from corral_common.timeouts import within
from corral_gateway.state import GATEWAY
from corral_gateway.ui.recent import Finished, Outcome, RecentRequests
from corral_gateway.ui.throughput import Throughput

log = structlog.get_logger(__name__)

# Lane entries remembered (request id -> model, owner) to name the model of a failed request,
# whose final event does not carry it.
MODELS_REMEMBERED = 2000
# How long the board watcher waits for a status before looking again.
STATUS_WAIT_S = 30.0


class LaneFeed:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.recent = RecentRequests()
        self.throughput = Throughput(clock)
        self.board: StatusBoard | None = None
        self.stale_after_s = 10.0
        self._seen = 0.0
        self.gateway_id = ""
        self.version = 0
        self.closed = False
        self._clock = clock
        self._changed = asyncio.Event()
        self._jobs: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._watchers = 0

    # -- the change signal -----------------------------------------------------------------

    def changed(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_change(self, version: int, within_s: float) -> int:
        """The feed's version once it differs from `version`, or after `within_s`."""
        if self.version == version and not self.closed:
            with contextlib.suppress(TimeoutError):
                await within(self._changed.wait(), within_s)
        return self.version

    def close(self) -> None:
        """The gateway is stopping: every stream ends (app.on_shutdown, before aiohttp waits
        for the handlers still running)."""
        self.closed = True
        self.changed()

    def attach(self, board: StatusBoard, gateway_id: str, stale_after_s: float = 10.0) -> None:
        """The gateway's status board (and when its statuses go stale) and the gateway's id."""
        self.board = board
        self.stale_after_s = stale_after_s
        self.gateway_id = gateway_id

    def statuses(self) -> list[SchedulerStatus]:
        return self.board.fresh() if self.board is not None else []

    # -- the schedulers' statuses ----------------------------------------------------------

    async def watch_board(self) -> None:
        """Signal a change for each status the board takes in."""
        moment = 0.0
        while True:
            moment = await self.board_round(moment)

    async def board_round(self, moment: float) -> float:
        """Wait (bounded) for a status sent at or after `moment`, and signal a change if a fresh
        one is newer than any seen. Returns the moment to wait from next: just after the newest
        fresh status, and never before the stale limit, so that a status that came in already
        stale (its sender's clock far behind) cannot wake the watcher again and again."""
        assert self.board is not None
        statuses = await self.board.newer_than(moment, STATUS_WAIT_S)
        newest = max((s.sent_at for s in statuses), default=0.0)
        if newest > self._seen:
            self._seen = newest
            self._remember(statuses)
            self.changed()
        return max(self._seen + 1e-6, self._clock() - self.stale_after_s)

    def _remember(self, statuses: list[SchedulerStatus]) -> None:
        for status in statuses:
            for entry in status.lane:
                self._jobs[entry.request_id] = (entry.model, entry.owner)
                self._jobs.move_to_end(entry.request_id)
        while len(self._jobs) > MODELS_REMEMBERED:
            self._jobs.popitem(last=False)

    # -- this gateway's job events -----------------------------------------------------------

    def take(self, event: Event) -> None:
        """One event of this gateway's jobs, as the hub received it."""
        match event:
            case Tokens(request_id=request_id, chunks=chunks) if self._watchers:
                self.throughput.tokens(request_id, len(chunks))
            case Done():
                self._finished(event)
            case Failed():
                self._failed(event)
            case Cancelled(request_id=request_id):
                self._ended(request_id, "cancelled", CANCELED_STATUS, "cancelled")

    def _finished(self, done: Done) -> None:
        now = self._clock()
        generation = self.throughput.finish(done.request_id)
        tokens = _count(done.final.get("eval_count"))
        if tokens is None and generation is not None:
            tokens = generation.tokens
        rate = None
        eval_ns = _count(done.final.get("eval_duration"))
        if tokens and eval_ns:
            rate = round(tokens / (eval_ns / 1e9), 1)
        elif generation is not None and (measured := generation.rate()) is not None:
            rate = round(measured, 1)
        self._jobs.pop(done.request_id, None)
        self.recent.add(
            Finished(
                request_id=done.request_id,
                model=done.model,
                outcome="done",
                status=200,
                finished_at=now,
                latency_ms=round((now - done.enqueued_at) * 1000) if done.enqueued_at else None,
                waited_ms=done.waited_ms,
                tokens=tokens,
                tokens_per_s=rate,
                owner=done.owner,
            )
        )
        self.changed()

    def _failed(self, failed: Failed) -> None:
        self._ended(failed.request_id, "error", failed.status, failed.message[:200])

    def _ended(self, request_id: str, outcome: Outcome, status: int, error: str) -> None:
        generation = self.throughput.finish(request_id)
        model, owner = self._jobs.pop(request_id, ("", None))
        self.recent.add(
            Finished(
                request_id=request_id,
                model=model,
                outcome=outcome,
                status=status,
                finished_at=self._clock(),
                tokens=generation.tokens if generation is not None else None,
                owner=owner,
                error=error,
            )
        )
        self.changed()

    # -- watchers and the token binding ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """While a page watches, token events are counted too (tokens per second)."""
        self._watchers += 1
        try:
            yield
        finally:
            self._watchers -= 1


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


FEED = web.AppKey("lane_feed", LaneFeed)


async def feed_ctx(app: web.Application) -> AsyncIterator[None]:
    """The feed's board watcher and its place among the hub's observers; after the gateway's
    own context (it needs the hub)."""
    gateway = app[GATEWAY]
    feed = app[FEED]
    feed.attach(gateway.hub.status, gateway.settings.instance_id, gateway.settings.status_stale_s)
    gateway.hub.observe(feed.take)
    async with supervised(Task("lane feed board watcher", feed.watch_board)):
        yield


async def close_feed(app: web.Application) -> None:
    app[FEED].close()
