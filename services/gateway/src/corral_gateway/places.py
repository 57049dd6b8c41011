"""Provisional places: a position this gateway can tell a waiting client at once, before the
scheduler has admitted its job.

The scheduler orders and reports only the jobs it has admitted (its admission window, 512
unacked); the rest wait in RabbitMQ in arrival order, unknown to it. Their clients used to get
no byte, not even headers, until admission (11-33 s at 10,000 clients). The gateway knows
enough to place such a job itself:

- its own jobs in the lane: those the scheduler admitted, with the positions it told them, and
  those still in the broker (placed here, not heard of yet), in the order they were published;
- what the schedulers' status broadcasts say of everyone else's: the listed lane entries that
  are not this gateway's, and the broker backlog beyond the listing.

A job still in the broker is behind every admitted job, and behind this gateway's jobs
published before it. So its provisional position is

    base + extra + i

with `base` the furthest-back position told to one of this gateway's admitted, waiting jobs
(an upper bound: told positions only fall), `extra` the other gateways' waiting jobs as the
last status counted them, and `i` its rank among this gateway's jobs still in the broker.
With one gateway that is never lower than the position the scheduler reports at admission
(one plus the lane's jobs ahead of it: at most the lane's length); with several, `extra` is as
old as the last status, and the relay clamps what it shows so a position never rises.

A provisional is told only when the job cannot run at once: this gateway's own jobs already
fill every server, or the last status listed others' jobs waiting. A job on an idle lane is
told nothing here, so a stream that never waited stays byte for byte the backend's own. And only
when the scheduler is not placing jobs itself: while its window has room, it admits a job and
tells its place within moments, so a job is left to it for `ADMISSION_WAIT_S`; once a job of
this gateway's has waited that long unadmitted (the window is full), or the last one admitted
took that long (a crowd arriving faster than the scheduler admits: its place came too late for
a client to hear it within 100 ms), it is told its provisional place, and so is every job
placed after it, at once, until a job is admitted promptly again.

Positions of jobs still in the broker fall as the lane moves: recomputed at most every
`RECOMPUTE_S` after the lane's news for this gateway (its `Positions`, a job started or over)
or a status, and told to a client only when its place fell by a tenth (`TELL_FALL`).
Nothing here is sent through the broker: the traffic is this gateway's own writes to its
clients.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from corral_common.messages import FINAL_KINDS, Event, Position
from corral_common.status_board import StatusBoard
from corral_gateway.memory import Releaser

# Pending places are recomputed at most this often (a burst of lane news is one recompute).
RECOMPUTE_S = 0.25
# A job the scheduler has not placed within this long after its gateway did is beyond the
# admission window (the window is full) or its admission is behind (a crowd arriving faster
# than the scheduler admits, a quorum queue's confirm taking hundreds of ms under load): it is
# told its provisional place then, and every job placed after it at once, as long as the
# scheduler's admissions keep taking that long. While they take less, the scheduler's own
# report comes first, as it always did. Well under the 100 ms in which a waiting client is to
# hear its place, with the recompute that tells it.
ADMISSION_WAIT_S = 0.05
# A job in the broker is told its new place once it fell by a tenth (at least one place): a
# client 5,000th in line hears every 500 places, one near the front every place (the relay's
# heartbeat counts its wait down in between).
TELL_FALL = 10
# Own request ids remembered after their job ended, so a status that still lists one does not
# count it as another gateway's.
RECENT_REMEMBERED = 10_000

PROVISIONAL = Counter(
    "corral_gateway_provisional_positions_total",
    "Positions the gateway told waiting requests itself, before the scheduler admitted them",
)


@dataclass(eq=False)
class Slot:
    """One of this gateway's jobs in the lane, from its publish until its final event."""

    # Puts an event on the request's queue (its relay reads it as the scheduler's own).
    tell: Callable[[Position], None]
    # The last position told (provisional or the scheduler's); None: told none.
    told: int | None = None
    wait_ms: int = 0
    admitted: bool = False
    running: bool = False
    # When it was placed (the clock of `Places`), and whether it must wait but was left for the
    # scheduler to place (it is told here only if the scheduler has not within
    # `ADMISSION_WAIT_S`).
    placed_at: float = 0.0
    deferred: bool = False


class Places:
    def __init__(self, status: StatusBoard, clock: Callable[[], float] = time.monotonic) -> None:
        self.status = status
        self._clock = clock
        # Every own job in the lane, in the order it was placed.
        self._slots: dict[str, Slot] = {}
        # Own jobs not heard of from a scheduler yet (in the broker), in publish order.
        self._pending: OrderedDict[str, Slot] = OrderedDict()
        # Own jobs admitted and waiting (not running).
        self._admitted: dict[str, Slot] = {}
        # How many of `_pending` must wait (told a place, or left to the scheduler for a moment);
        # the rest run as soon as admitted.
        self._waiting_pending = 0
        self._recent: OrderedDict[str, None] = OrderedDict()
        # Others' waiting jobs (listed by the last statuses), and all of them with the backlog.
        self.others_listed = 0
        self.extra = 0
        self.capacity = 1
        self._per_job_ms = 0
        # The furthest-back place told to an admitted job, and one job's share of a wait, as of
        # the last recompute (raised by any higher report since): a placement reads them, not
        # every admitted job.
        self._base_seen = 0
        self._job_ms_seen = 0
        self._timer: asyncio.TimerHandle | None = None
        # How long the scheduler took to admit the last job of this gateway's that had to
        # wait (from its placing here to the first news of it): at ADMISSION_WAIT_S or more,
        # admission is behind, and jobs are told their place at once.
        self.admission_lag_s = 0.0
        # Provisional positions told, in all (the benchmark reads it).
        self.told = 0
        # A crowd's memory handed back to the system once its last job here is over.
        self.memory = Releaser()

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def must_wait(self, request_id: str) -> bool:
        """Whether this job, placed and not heard of yet, was found unable to run at once
        (told its place here, or left to the scheduler to place): its client will hear a place
        before anything else, so its headers need not wait for the broker's confirm."""
        slot = self._pending.get(request_id)
        return slot is not None and (slot.deferred or slot.told is not None)

    def place(self, request_id: str, tell: Callable[[Position], None]) -> Position | None:
        """A job about to be published: registered, and its provisional position told (and
        returned) when it cannot run at once; None when it may."""
        self._forget(request_id)
        self.memory.hold()
        others = len(self._slots)
        now = self._clock()
        oldest = next(iter(self._pending.values()), None)
        slot = Slot(tell, placed_at=now)
        self._slots[request_id] = slot
        self.memory.held(len(self._slots))
        self._pending[request_id] = slot
        if others < self.capacity and self.others_listed == 0:
            return None
        behind = self.admission_lag_s >= ADMISSION_WAIT_S or (
            oldest is not None and now - oldest.placed_at >= ADMISSION_WAIT_S
        )
        if not behind:
            # The scheduler admits jobs as they come while its window has room: its own place
            # comes in a moment. Told here only if it does not.
            slot.deferred = True
            self._waiting_pending += 1
            self._soon(ADMISSION_WAIT_S)
            return None
        # Those placed before it that need not wait run (or are about to): not ahead of it.
        self._waiting_pending += 1
        position = self._base_now() + self.extra + self._waiting_pending
        return self._tell(request_id, slot, position, self._job_ms_seen)

    def refused(self, request_id: str) -> None:
        """The publish was refused: the job is not in the lane."""
        self._forget(request_id)

    def forget(self, request_id: str) -> None:
        """The request is over here (its ticket closed)."""
        if self._forget(request_id):
            self._soon()

    def heard(self, event: Event) -> None:
        """A scheduler's event for one of this gateway's requests."""
        slot = self._slots.get(event.request_id)
        if slot is None:
            return
        kind = event.kind
        if kind in FINAL_KINDS:
            self.forget(event.request_id)
            return
        if kind not in ("accepted", "position", "started"):
            return
        if self._unpend(event.request_id):
            slot.admitted = True
            if slot.deferred or slot.told is not None:
                self.admission_lag_s = self._clock() - slot.placed_at
        if kind == "started":
            slot.running = True
            self._admitted.pop(event.request_id, None)
        elif not slot.running:
            if isinstance(event, Position):
                slot.told, slot.wait_ms = event.position, event.estimated_wait_ms
            elif slot.told is None and slot.deferred:
                # Admitted, its place not heard yet (it follows `accepted`): counted one
                # behind the furthest back known, so a job placed meanwhile is behind it.
                slot.told = self._base_now() + 1
            if slot.told is not None and slot.told > self._base_seen:
                self._base_seen = slot.told
                if slot.wait_ms:
                    self._job_ms_seen = round(slot.wait_ms / slot.told)
            self._admitted[event.request_id] = slot
        self._soon()

    def status_arrived(self) -> None:
        """A scheduler's status came: others' jobs and the servers counted again."""
        statuses = self.status.fresh()
        listed = 0
        others = 0
        backlog = 0
        rates = 0.0
        capacity = 0
        for status in statuses:
            waiting = [e for e in status.lane if e.position > 0]
            listed += len(waiting)
            others += sum(
                1
                for e in waiting
                if e.request_id not in self._slots and e.request_id not in self._recent
            )
            backlog += max(0, status.queue.waiting - len(waiting))
            rates += status.queue.processing_rate
            capacity = max(capacity, sum(1 for s in status.servers if s.in_rotation))
        own_unlisted = max(0, len(self._pending) + len(self._admitted) - (listed - others))
        self.others_listed = others
        self.extra = others + max(0, backlog - own_unlisted)
        self.capacity = max(1, capacity)
        self._per_job_ms = round(1000 / rates) if rates > 0 else 0
        self._base_seen, self._job_ms_seen = self._base(), self._job_ms()
        self._soon()

    # Internals.

    def _forget(self, request_id: str) -> bool:
        slot = self._slots.pop(request_id, None)
        if slot is None:
            return False
        self._unpend(request_id)
        self._admitted.pop(request_id, None)
        self._recent[request_id] = None
        while len(self._recent) > RECENT_REMEMBERED:
            self._recent.popitem(last=False)
        if not self._slots:
            self.memory.release_soon()
        return True

    def _unpend(self, request_id: str) -> bool:
        slot = self._pending.pop(request_id, None)
        if slot is None:
            return False
        if slot.told is not None or slot.deferred:
            self._waiting_pending -= 1
        return True

    def _base_now(self) -> int:
        return self._base_seen if self._admitted else 0

    def _base(self) -> int:
        return max((s.told or 0 for s in self._admitted.values()), default=0)

    def _job_ms(self) -> int:
        """One job's share of a wait: from the furthest-back admitted job's estimate, else
        from the schedulers' processing rate; 0 when neither is known."""
        back = max(self._admitted.values(), key=lambda s: s.told or 0, default=None)
        if back is not None and back.told:
            return round(back.wait_ms / back.told)
        return self._per_job_ms

    def _tell(self, request_id: str, slot: Slot, position: int, job_ms: int) -> Position:
        slot.told = position
        slot.wait_ms = position * job_ms
        self.told += 1
        PROVISIONAL.inc()
        update = Position(request_id=request_id, position=position, estimated_wait_ms=slot.wait_ms)
        slot.tell(update)
        return update

    def _soon(self, delay_s: float = RECOMPUTE_S) -> None:
        """A recompute within `delay_s` (one already due sooner stands)."""
        if not self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        due = loop.time() + delay_s
        if self._timer is not None:
            if self._timer.when() <= due:
                return
            self._timer.cancel()
        self._timer = loop.call_at(due, self.recompute)

    def recompute(self) -> None:
        """Tell every job still in the broker its place, where it fell."""
        self._timer = None
        self._base_seen, self._job_ms_seen = self._base(), self._job_ms()
        base = self._base_seen + self.extra
        job_ms = self._job_ms_seen
        now = self._clock()
        rank = 0
        # The soonest a job left to the scheduler is due to be told here (s from now).
        later: float | None = None
        for request_id, slot in self._pending.items():
            if slot.told is None:
                if not slot.deferred:
                    # Placed on a lane that looked idle: it runs, not ahead of the others.
                    continue
                rank += 1
                if (left := ADMISSION_WAIT_S - (now - slot.placed_at)) > 0:
                    later = left if later is None else min(later, left)
                    continue
                # Not admitted in time: beyond the window. Told its place now.
                slot.deferred = False
                self._tell(request_id, slot, base + rank, job_ms)
                continue
            rank += 1
            position = base + rank
            if position > slot.told - max(1, slot.told // TELL_FALL):
                continue
            slot.told, slot.wait_ms = position, position * job_ms
            self.told += 1
            PROVISIONAL.inc()
            slot.tell(
                Position(request_id=request_id, position=position, estimated_wait_ms=slot.wait_ms)
            )
        if later is not None:
            self._soon(later)
