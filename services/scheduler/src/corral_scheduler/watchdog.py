"""The lane's watchdog: a scheduler whose lane holds work but does not move hands it over.

Why it exists: a scheduler that is alive but whose lane no longer moves (its executor wedged on
a bug, a backend call that never returns, an ack that never completes) keeps the jobs queue's
single-active-consumer slot. RabbitMQ only moves that slot when the consumer goes away, so the
standby never takes over and every client waits until its deadline, while a liveness check that
only asks "is the process up" says all is well (the lane shows `waiting 1, running 0` forever).

What counts as progress: a job started, a job finished, and a chunk from the backend. A long
generation streaming tokens is a lane that moves; a lane that holds work is one with a running
job, or with waiting jobs while not paused (a paused lane with nothing running is idle by
choice). The clock starts when the lane begins holding work, so an idle hour is not a stall.

When it is stuck: after `lane_stall_s` of holding work without progress. The default sits a
little above the backend read timeout (`backend_read_timeout_s`, 600 s): within that time a
running job either produces a chunk or fails with a timeout, either of which is progress, so a
healthy lane never reaches the limit, even through a slow model load.

What it does then: the verdict goes in every status broadcast (`SchedulerStatus.health`, read
by gateways' `/health`), this scheduler's `/ready` fails and its `/health` says `unhealthy`, and
it hands the lane over: stop consuming and close the jobs channel (its unacked jobs, the running
one included, go back to the queue, and the single-active-consumer slot moves to a standby),
cancel the running job (which closes the backend response), then exit non-zero so its process
supervisor restarts it as a fresh standby. A stuck lane cannot be trusted to un-stick itself,
and the handover path is the one a crash takes, which the failover tests already hold to the
invariant (never two generations at once, no spliced answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from corral_common.messages import LaneHealth
from corral_scheduler import metrics
from corral_scheduler.lane import Lane

log = structlog.get_logger(__name__)

# How often the watchdog looks, at most; a short stall limit (tests) makes it look more often.
CHECK_INTERVAL_S = 1.0


class Watchdog:
    def __init__(
        self,
        lane: Lane,
        stall_s: float,
        on_stuck: Callable[[LaneHealth], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lane = lane
        self.stall_s = stall_s
        self._on_stuck = on_stuck
        self._clock = clock
        # When the lane last started holding work; None while it holds none.
        self._held_since: float | None = None
        self.verdict = LaneHealth()

    @property
    def stuck(self) -> bool:
        return self.verdict.stuck

    def assess(self) -> LaneHealth:
        """The lane's health now (pure bookkeeping: no I/O)."""
        now = self._clock()
        lane = self.lane
        if not lane.holds_work():
            self._held_since = None
            stalled = 0.0
        else:
            if self._held_since is None:
                self._held_since = now
            stalled = max(0.0, now - max(self._held_since, lane.progress_at))
        # Once stuck, stays stuck: the handover is under way and must not be undone by a
        # job that shows up meanwhile.
        stuck = self.verdict.stuck or stalled >= self.stall_s
        self.verdict = LaneHealth(
            stuck=stuck,
            last_progress_at=lane.progress_wall,
            stalled_for_s=round(stalled, 1),
        )
        return self.verdict

    def reason(self) -> str | None:
        if not self.verdict.stuck:
            return None
        return (
            f"lane stuck: it holds work but nothing started or finished for "
            f"{self.verdict.stalled_for_s:.0f} s (limit {self.stall_s:g} s); handing it over"
        )

    async def run_forever(self) -> None:
        interval = min(CHECK_INTERVAL_S, self.stall_s / 4)
        while True:
            await asyncio.sleep(interval)
            verdict = self.assess()
            if verdict.stuck:
                metrics.LANE_STUCK.set(1)
                log.error(
                    "lane stuck; handing it to a standby",
                    stalled_for_s=verdict.stalled_for_s,
                    limit_s=self.stall_s,
                    running=len(self.lane.running_jobs()),
                    waiting=len(self.lane),
                )
                await self._on_stuck(verdict)
                # The handover ends in this process exiting; nothing more to watch.
                await asyncio.Event().wait()
