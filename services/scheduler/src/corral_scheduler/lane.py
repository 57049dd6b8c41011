"""The lane: the admitted jobs waiting for the backend, and everything else the lane's state is
made of (the running job, the model each backend holds, the broker connection's epoch, when
the lane last moved), so that admission, the executor, the broadcasters and the watchdog read
and change one object instead of reaching into each other.

Pure bookkeeping, no I/O: the admission callback pushes, the executor pops from the head and
marks the job running, a cancel removes. Position = jobs ahead: the running one (if any) plus
those earlier in the lane; a job's wait = what is left of the running job plus the estimates
of the jobs ahead. Both are computed here only (`snapshot`, `placement`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral_common.messages import CancelStage, Job, ModelActivity, Priority
from corral_common.model_names import canonical_model_name
from corral_scheduler.eta import cumulative_waits
from corral_scheduler.ordering import ANONYMOUS, Ordering, OrderingPolicy

# The processing rate is counted over this window.
RATE_WINDOW_S = 60.0


@dataclass(eq=False)
class Entry:
    job: Job
    # The AMQP delivery to ack once the job's final event is out; opaque here.
    delivery: Any
    # Which broker connection the delivery belongs to (`Lane.connection_epoch` when it was
    # admitted): after a reconnect the broker redelivers, and entries from the old connection
    # must not run, nor be acked.
    connection_epoch: int
    admitted_at: float
    # Admission order (see ordering.Waiting.arrival).
    arrival: int = 0
    estimate_ms: int = 0
    last_sent: tuple[int, int] | None = field(default=None)
    # The first wait estimate the client was given, and when, to measure its error.
    first_estimate: tuple[float, int] | None = None
    # Times a job for the loaded model was run before this one (ordering's grouping bound).
    overtaken: int = 0

    @property
    def request_id(self) -> str:
        return self.job.request_id

    def told(self, position: int, wait_ms: int, now: float) -> None:
        """Record a position update sent to the client."""
        self.last_sent = (position, wait_ms)
        if self.first_estimate is None:
            self.first_estimate = (now, wait_ms)

    @property
    def key(self) -> str:
        return self.job.client_key or ANONYMOUS

    @property
    def priority(self) -> Priority:
        return self.job.priority

    @property
    def model(self) -> str:
        return self.job.model


@dataclass
class Running:
    """The job the backend is running: its task (the executor's), and how far it got."""

    entry: Entry
    task: asyncio.Task[None]
    started_at: float
    stage: CancelStage = "loading"
    tokens: int = 0
    cancel_reason: str | None = None
    # Stops the job at its request's total deadline (`Executor._arm_deadline`).
    deadline_timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class Placed:
    """A waiting job's place: how many jobs are ahead of it and how long it should wait."""

    entry: Entry
    position: int
    wait_ms: int


# The key of the one backend a lane drives today (a pool would key by server).
ONE_BACKEND = "backend"


class Lane:
    def __init__(self, ordering: Ordering | None = None) -> None:
        self._waiting: OrderedDict[str, Entry] = OrderedDict()
        # Set while there is something to run and the lane is not paused.
        self._runnable = asyncio.Event()
        self.paused = False
        # Draining: the jobs held run to the end, new ones are refused.
        self.draining = False
        self.ordering = ordering or Ordering(OrderingPolicy(), time.monotonic)
        self.running: Running | None = None
        # The model each backend holds, as far as the lane knows (the last one it ran there).
        self._loaded: dict[str, str] = {}
        # Bumped on every broker connection loss; see Entry.connection_epoch.
        self.connection_epoch = 0
        # When each model's last job ended (epoch s), for the model manager's idle unloading.
        self.last_used: dict[str, float] = {}
        # Finish times over the last minute, for the processing rate.
        self.finished_at: deque[float] = deque()
        # The last sign of the lane moving (a job started or finished, a chunk from the
        # backend), monotonic and epoch seconds, for the watchdog (watchdog.py).
        self.progress_at = time.monotonic()
        self.progress_wall: float | None = None
        # Set when positions may have changed (the position broadcaster's wake-up), and when
        # a status broadcast is wanted now (the status reporter's).
        self.moved = asyncio.Event()
        self.status_requested = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def __iter__(self) -> Iterator[Entry]:
        """Waiting entries in the order they will run."""
        return iter(self.ordered())

    def ordered(self) -> list[Entry]:
        return self.ordering.order(self._waiting.values())  # type: ignore[return-value]

    def count(self, predicate: Callable[[Entry], bool]) -> int:
        return sum(1 for entry in self._waiting.values() if predicate(entry))

    def push(self, entry: Entry) -> None:
        self._waiting[entry.request_id] = entry
        self._update()

    def remove(self, request_id: str) -> Entry | None:
        entry = self._waiting.pop(request_id, None)
        self._update()
        return entry

    def pause(self) -> None:
        """Hold every waiting job (the running one finishes); positions keep flowing."""
        self.paused = True
        self._update()

    def resume(self) -> None:
        self.paused = False
        self.draining = False
        self._update()

    def _update(self) -> None:
        if self._waiting and not self.paused:
            self._runnable.set()
        else:
            self._runnable.clear()

    def drop_epoch_before(self, epoch: int) -> list[Entry]:
        stale = [e for e in self._waiting.values() if e.connection_epoch < epoch]
        for entry in stale:
            self.remove(entry.request_id)
        return stale

    def new_connection_epoch(self) -> list[Entry]:
        """The broker connection was lost: its unacked deliveries return to the queue. Forget
        the waiting ones (returned), and stop the running one, whose events and ack can no
        longer be delivered."""
        self.connection_epoch += 1
        dropped = self.drop_epoch_before(self.connection_epoch)
        if self.running is not None:
            self.cancel_running(self.running.entry.request_id, "broker connection lost")
        return dropped

    def is_stale(self, entry: Entry) -> bool:
        """Whether the entry's delivery died with an earlier broker connection."""
        return entry.connection_epoch < self.connection_epoch

    async def pop(self) -> Entry:
        """The entry to run next (by the ordering policy), once there is one."""
        while not self._runnable.is_set():
            await self._runnable.wait()
        chosen = self.ordering.choose(self._waiting.values(), self.loaded_model())
        self.remove(chosen.request_id)
        return chosen  # type: ignore[return-value]

    # The model each backend holds.

    def loaded_model(self, backend: str = ONE_BACKEND) -> str | None:
        return self._loaded.get(backend)

    def set_loaded(self, model: str | None, backend: str = ONE_BACKEND) -> None:
        if model is None:
            self._loaded.pop(backend, None)
        else:
            self._loaded[backend] = model

    # The running job.

    def start(self, entry: Entry, task: asyncio.Task[None]) -> Running:
        self.running = Running(entry, task, time.monotonic())
        self.progressed()
        self.moved.set()
        return self.running

    def finish(self) -> None:
        """The running job is over (whatever its outcome)."""
        self.running = None
        self.progressed()
        now = time.monotonic()
        self.finished_at.append(now)
        while self.finished_at[0] < now - RATE_WINDOW_S:
            self.finished_at.popleft()
        self.moved.set()

    def cancel_running(self, request_id: str, reason: str) -> bool:
        running = self.running
        if running is None or running.entry.request_id != request_id:
            return False
        running.cancel_reason = reason
        running.task.cancel()
        return True

    def remaining_ms(self) -> int:
        """What is left of the running job, by its estimate."""
        running = self.running
        if running is None:
            return 0
        elapsed = (time.monotonic() - running.started_at) * 1000
        return max(0, round(running.entry.estimate_ms - elapsed))

    def progressed(self) -> None:
        self.progress_at = time.monotonic()
        self.progress_wall = time.time()

    def holds_work(self) -> bool:
        """A running job, or waiting ones while not paused (a paused lane is idle by choice)."""
        return self.running is not None or (len(self) > 0 and not self.paused)

    def processing_rate(self) -> float:
        """Jobs finished per second over the last minute."""
        since = time.monotonic() - RATE_WINDOW_S
        return len([t for t in self.finished_at if t > since]) / RATE_WINDOW_S

    # Models' use, for the model manager.

    def used(self, job: Job) -> None:
        """The job is over: its model was used now (an unload forgets it)."""
        key = canonical_model_name(job.model)
        if job.kind == "unload":
            self.last_used.pop(key, None)
        else:
            self.last_used[key] = time.time()

    def model_activity(self) -> list[ModelActivity]:
        """Queued and running work per model, and when each was last used."""
        queued: Counter[str] = Counter(canonical_model_name(e.job.model) for e in self)
        running = self.running
        running_key = canonical_model_name(running.entry.job.model) if running else None
        names = set(queued) | set(self.last_used) | ({running_key} if running_key else set())
        return [
            ModelActivity(
                model=name,
                queued=queued[name],
                running=1 if name == running_key else 0,
                last_used_at=self.last_used.get(name),
            )
            for name in sorted(names)
        ]

    def ahead_of(self, request_id: str) -> list[Entry] | None:
        """The entries that will run before this one; None if it is not waiting."""
        if request_id not in self._waiting:
            return None
        ahead: list[Entry] = []
        for entry in self.ordered():
            if entry.request_id == request_id:
                return ahead
            ahead.append(entry)
        return None

    def positions(self, running: bool) -> list[tuple[Entry, int]]:
        # Position 0 means running; while paused nothing is, so the head waits at 1.
        ahead = 1 if running or self.paused else 0
        return [(entry, ahead + index) for index, entry in enumerate(self.ordered())]

    def snapshot(self) -> list[Placed]:
        """Every waiting job's position and wait, in the order they will run: the one place
        both are computed (the position broadcaster, admission's first answer, its retry
        hint and the status broadcast all read them from here)."""
        placed = self.positions(self.running is not None)
        waits = cumulative_waits(self.remaining_ms(), [entry.estimate_ms for entry, _ in placed])
        return [
            Placed(entry, position, wait_ms)
            for (entry, position), wait_ms in zip(placed, waits, strict=True)
        ]

    def placement(self, request_id: str) -> Placed | None:
        """One waiting job's place; None when it is not waiting."""
        if request_id not in self._waiting:
            return None
        return next((p for p in self.snapshot() if p.entry.request_id == request_id), None)
