"""The lane: the admitted jobs waiting for a backend server, and everything else the lane's
state is made of (each server's running job and loaded model, whether it is in rotation, the
broker connection's epoch, when the lane last moved), so that admission, the executors, the
broadcasters and the watchdog read and change one object instead of reaching into each other.

Pure bookkeeping, no I/O. The admission callback pushes; each server's executor loop asks for
its next job (`take`) and is handed one when the ordering assigns it (`_dispatch`, run on
every change: one decision for every free server, ordering.py); a cancel removes. A server
holds at most one job from the moment it is assigned until the executor reports it finished,
which is what keeps every server strictly serial.

A waiting job's position is 1 + the jobs ahead of it in the order (0 means running); its wait
is when the pool will reach it: the servers' running jobs' remainders and the estimates of the
jobs ahead, laid onto the servers as the ordering would (eta.pool_waits), a model load charged
once per swap. Both are computed here only (`snapshot`, `placement`). With the scheduler's
`SpeedBook` (`Lane(speeds=...)`) the waiting jobs are re-priced whenever it has learned
something since they were priced, and a running job's remainder follows its stream: the
tokens it has produced against the reply length expected of it by now (eta.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from corral_common.messages import STREAMED_KINDS, CancelStage, Job, ModelActivity, Priority
from corral_common.model_names import canonical_model_name, same_model
from corral_scheduler import metrics
from corral_scheduler.eta import SimServer, SpeedBook, grouped_order, lay, pool_waits
from corral_scheduler.ordering import ANONYMOUS, PRIORITY_RANK, Ordering, OrderingPolicy

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
    # The job's own work (prompt and generation), and the load it costs where its model is not
    # the one loaded: kept apart so a wait estimate charges a load once per swap.
    estimate_ms: int = 0
    load_ms: int = 0
    last_sent: tuple[int, int] | None = field(default=None)
    # The first wait estimate the client was given, and when, to measure its error.
    first_estimate: tuple[float, int] | None = None
    # Times a job for the loaded model was run before this one (ordering's grouping bound).
    overtaken: int = 0
    # The `SpeedBook.version` its estimate and load were priced at (-1: by whoever admitted it).
    priced_version: int = -1

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
    """The job a server is running: the task running it (its server's loop in the executor,
    set when it starts: a job is assigned a moment before), and how far it got."""

    entry: Entry
    server: Server
    started_at: float
    task: asyncio.Task[None] | None = None
    # Its estimate as it runs there: its work, plus a load if it swapped the server's model.
    estimate_ms: int = 0
    stage: CancelStage = "loading"
    # Chunks streamed so far (`tokens`); when the first and the latest came (monotonic).
    streamed: int = 0
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancel_reason: str | None = None
    # Stops the job at its request's total deadline (`Executor._arm_deadline`).
    deadline_timer: asyncio.TimerHandle | None = None
    # Its server did not answer and it went back to the lane for another (executor.py).
    failed_over: bool = False

    @property
    def tokens(self) -> int:
        """Chunks the backend has streamed for the job (the executor counts them); each count
        is timed, for the live token rate the wait estimate reads."""
        return self.streamed

    @tokens.setter
    def tokens(self, count: int) -> None:
        now = time.monotonic()
        if count > 0 and self.first_token_at is None:
            self.first_token_at = now
        if count > self.streamed:
            self.last_token_at = now
        self.streamed = count


@dataclass(frozen=True)
class Placed:
    """A waiting job's place: how many jobs are ahead of it and how long it should wait."""

    entry: Entry
    position: int
    wait_ms: int


@dataclass(eq=False)
class _Tail:
    """The last snapshot, kept for one job's place (`Lane.placement`) and for a job admitted
    behind every waiting one (`Lane.push`), so neither plays the whole lane again: true while
    the lane has not changed in any other way (`Lane._changes`), no server has started or
    ended a job, and the speed book has learned nothing new. Waits are as of the snapshot,
    corrected by how far each server's running job has got since."""

    changes: int
    priced: int
    # The servers the play laid jobs onto: each with its running job, the model it will hold
    # next, and what was left of its running job then (ms).
    servers: list[tuple[Server, Running | None, str | None, int]]
    # When each server is free once every job placed has run (ms from the snapshot).
    sims: list[SimServer]
    # One server playing the ordering's model grouping forward (eta.grouped_order).
    grouped: bool
    # Request id -> (position, wait at the snapshot, index of the server it is laid onto).
    placed: dict[str, tuple[int, int, int]]
    last_arrival: int


@dataclass(eq=False)
class Server:
    """One backend server's part of the lane: at most one job at a time."""

    name: str
    running: Running | None = None
    # The model it holds, as far as the lane knows (the last one it ran there).
    loaded: str | None = None
    # When it last started a job (monotonic), for "least recently used" when a swap is due.
    last_used: float = 0.0
    # Out of rotation after failing to answer; its executor probes it until it does.
    in_rotation: bool = True
    # The models it lists (canonical names); None: not known, so anything may be asked.
    models: frozenset[str] | None = None
    jobs_done: int = 0
    swaps: int = 0
    # Set while its executor waits for a job; the dispatch resolves it with one.
    waiter: asyncio.Future[Running] | None = None

    @property
    def free(self) -> bool:
        return self.running is None and self.waiter is not None and not self.waiter.done()

    def lists(self, model: str) -> bool:
        return self.models is not None and canonical_model_name(model) in self.models


def _uncount(counts: Counter[Any], name: object) -> None:
    """One fewer `name` in `counts`, none kept at 0 (a count's keys are what is there)."""
    counts[name] -= 1
    if not counts[name]:
        del counts[name]


# The server's name in a lane built without names (tests; the one-backend default is named
# after its host and port by the settings).
ONE_BACKEND = "backend"


class Lane:
    def __init__(
        self,
        ordering: Ordering | None = None,
        servers: Iterable[str] = (ONE_BACKEND,),
        speeds: SpeedBook | None = None,
    ) -> None:
        # Re-prices waiting jobs and running remainders as it learns (None: the prices jobs
        # were admitted with, and running jobs by their elapsed time).
        self.speeds = speeds
        self._waiting: OrderedDict[str, Entry] = OrderedDict()
        # The waiting jobs counted by caller, class and model, to tell in O(1) whether a new
        # job goes behind all of them (`_extend`).
        self._keys: Counter[str] = Counter()
        self._classes: Counter[Priority] = Counter()
        self._models: Counter[str] = Counter()
        # Bumped by every change that may move a waiting job's place or wait, but a job pushed
        # behind every other (which extends the last snapshot instead: `_tail`).
        self._changes = 0
        self._tail: _Tail | None = None
        self.paused = False
        # Draining: the jobs held run to the end, new ones are refused.
        self.draining = False
        self.ordering = ordering or Ordering(OrderingPolicy(), time.monotonic)
        self.servers: dict[str, Server] = {name: Server(name) for name in servers}
        if not self.servers:
            raise ValueError("a lane needs at least one server")
        for name in self.servers:
            metrics.SERVER_IN_ROTATION.labels(name).set(1)
        # Bumped on every broker connection loss; see Entry.connection_epoch.
        self.connection_epoch = 0
        # When each model's last job ended on each server (epoch s; model -> server -> time),
        # for the model manager's idle unloading, which is per server.
        self.last_used_on: dict[str, dict[str, float]] = {}
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

    def queued_for(self, key: str) -> int:
        """Waiting jobs of one caller (`Entry.key`)."""
        return self._keys[key]

    def push(self, entry: Entry) -> None:
        before = self._changes
        self._add(entry)
        self._dispatch()
        if self._changes == before and not self._extend(entry):
            self._changes += 1

    def remove(self, request_id: str) -> Entry | None:
        entry = self._pop(request_id)
        self._counted()
        return entry

    def _add(self, entry: Entry) -> None:
        """Every job that starts waiting comes in here (the counts follow the waiting jobs)."""
        self._pop(entry.request_id)
        self._waiting[entry.request_id] = entry
        self._keys[entry.key] += 1
        self._classes[entry.priority] += 1
        self._models[canonical_model_name(entry.model)] += 1

    def _pop(self, request_id: str) -> Entry | None:
        """Every job that stops waiting goes out here."""
        entry = self._waiting.pop(request_id, None)
        if entry is None:
            return None
        self._changes += 1
        _uncount(self._keys, entry.key)
        _uncount(self._classes, entry.priority)
        _uncount(self._models, canonical_model_name(entry.model))
        return entry

    def pause(self) -> None:
        """Hold every waiting job (running ones finish); positions keep flowing."""
        self.paused = True
        self._changes += 1

    def drain(self) -> None:
        """Run every job held to its end (a paused lane resumes), refuse new ones."""
        self.paused = False
        self.draining = True
        self._dispatch()

    def resume(self) -> None:
        self.paused = False
        self.draining = False
        self._dispatch()

    def _counted(self) -> None:
        """The lane's gauges, true after every change (a job admitted, assigned, finished)."""
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        metrics.QUEUE_RUNNING.set(len(self.running_jobs()))
        for server in self.servers.values():
            metrics.SERVER_BUSY.labels(server.name).set(int(server.running is not None))

    # Handing jobs to servers.

    def can_run(self, server: Server, entry: Entry) -> bool:
        """Whether `server` may run `entry`: a job aimed at a server runs there only; a model
        some server lists runs only where it is listed (any server, when none lists it, so
        the backend answers for an unknown model); an unload goes where its model is loaded."""
        job = entry.job
        if job.server is not None:
            return job.server == server.name
        if job.kind == "unload":
            holders = [s for s in self.servers.values() if same_model(s.loaded or "", job.model)]
            if holders:
                return server in holders
        if server.lists(job.model):
            return True
        return not any(other.lists(job.model) for other in self.servers.values())

    def _dispatch(self) -> None:
        """Hand waiting jobs to the free servers, as the ordering decides for all of them."""
        free = [s for s in self.servers.values() if s.free and s.in_rotation]
        if free and self._waiting and not self.paused:
            for entry, server in self.ordering.assign(
                list(self._waiting.values()), free, self.can_run
            ):
                self._pop(entry.request_id)
                running = Running(entry, server, time.monotonic())
                server.running = running
                server.last_used = running.started_at
                assert server.waiter is not None
                server.waiter.set_result(running)
                self.moved.set()
        self._counted()

    def ask(self, server: Server) -> asyncio.Future[Running]:
        """`server` wants its next job: resolved when the ordering assigns it one. The server
        holds that job (`server.running`) from then until `finish`."""
        if server.running is not None:
            raise RuntimeError(f"server {server.name} asked for a job while running one")
        server.waiter = asyncio.get_running_loop().create_future()
        self._dispatch()
        return server.waiter

    def withdraw(self, server: Server) -> None:
        """`server` no longer waits (its executor is stopping); a job assigned to it in the
        meantime goes back to the lane, unstarted."""
        waiter, server.waiter = server.waiter, None
        if waiter is None:
            return
        if waiter.done() and not waiter.cancelled():
            running = waiter.result()
            server.running = None
            self._add(running.entry)
            self._changes += 1
            self._counted()
        else:
            waiter.cancel()

    async def take(self, server: Server) -> Running:
        """`ask`, awaited."""
        waiter = self.ask(server)
        try:
            running = await waiter
        except asyncio.CancelledError:
            self.withdraw(server)
            raise
        server.waiter = None
        return running

    def requeue(self, running: Running) -> None:
        """A job that never reached its server (it failed to answer) goes back to its place,
        for another server; the server is free again once its executor asks."""
        running.server.running = None
        self._add(running.entry)
        self._changes += 1
        self.moved.set()
        self._dispatch()

    def set_rotation(self, server: Server, in_rotation: bool) -> None:
        server.in_rotation = in_rotation
        self._changes += 1
        metrics.SERVER_IN_ROTATION.labels(server.name).set(int(in_rotation))
        self.status_requested.set()
        if in_rotation:
            self._dispatch()

    def can_fail_over(self, server: Server, entry: Entry) -> bool:
        """Whether another server in rotation could run `entry` instead of `server`."""
        return any(
            other is not server and other.in_rotation and self.can_run(other, entry)
            for other in self.servers.values()
        )

    def set_models(self, server: Server, models: Iterable[str] | None) -> None:
        """What `server` lists (its model list, refreshed by the status reporter)."""
        server.models = (
            None if models is None else frozenset(canonical_model_name(m) for m in models)
        )
        self._changes += 1
        self._dispatch()

    def drop_epoch_before(self, epoch: int) -> list[Entry]:
        stale = [e for e in self._waiting.values() if e.connection_epoch < epoch]
        for entry in stale:
            self.remove(entry.request_id)
        return stale

    def new_connection_epoch(self) -> list[Entry]:
        """The broker connection was lost: its unacked deliveries return to the queue. Forget
        the waiting ones (returned), and stop the running ones, whose events and acks can no
        longer be delivered."""
        self.connection_epoch += 1
        dropped = self.drop_epoch_before(self.connection_epoch)
        for running in self.running_jobs():
            self.cancel_running(running.entry.request_id, "broker connection lost")
        return dropped

    def is_stale(self, entry: Entry) -> bool:
        """Whether the entry's delivery died with an earlier broker connection."""
        return entry.connection_epoch < self.connection_epoch

    # What each server holds.

    def loaded_model(self, server: Server) -> str | None:
        return server.loaded

    def set_loaded(self, server: Server, model: str | None) -> None:
        if model is not None and server.loaded is not None and not same_model(server.loaded, model):
            server.swaps += 1
            metrics.MODEL_SWAPS.inc()
            metrics.SERVER_SWAPS.labels(server.name).inc()
        server.loaded = model
        self._changes += 1

    # The running jobs.

    def running_jobs(self) -> list[Running]:
        return [s.running for s in self.servers.values() if s.running is not None]

    def running_job(self, request_id: str) -> Running | None:
        return next((r for r in self.running_jobs() if r.entry.request_id == request_id), None)

    def start(self, running: Running, task: asyncio.Task[None], estimate_ms: int) -> None:
        """The executor started the assigned job in `task` (its server's loop, which a cancel
        of the job cancels); a cancel that came in between the assignment and now takes
        effect at once."""
        running.task = task
        running.estimate_ms = estimate_ms
        running.started_at = time.monotonic()
        if running.cancel_reason is not None:
            task.cancel()
        self.progressed()
        self.moved.set()

    def finish(self, running: Running, *, ran: bool = True) -> None:
        """The server's job is over (whatever its outcome); `ran` False when it never started
        (expired, stale)."""
        server = running.server
        if server.running is running:
            server.running = None
        self.progressed()
        if ran:
            server.jobs_done += 1
            metrics.SERVER_JOBS.labels(server.name).inc()
            now = time.monotonic()
            self.finished_at.append(now)
            while self.finished_at[0] < now - RATE_WINDOW_S:
                self.finished_at.popleft()
        self._counted()
        self.moved.set()

    def cancel_running(self, request_id: str, reason: str) -> bool:
        running = self.running_job(request_id)
        if running is None:
            return False
        if running.cancel_reason is not None:
            # Already being cancelled (a client's cancel and the gateway's stray-event cancel
            # can both arrive): a second `cancel()` would land in the job's own cancel handling
            # and cut it short, so the job's `cancelled` event and count would never come.
            return True
        running.cancel_reason = reason
        if running.task is not None:
            running.task.cancel()
        return True

    def remaining_ms(self, running: Running) -> int:
        """What is left of a running job: its estimate less the time it has run; with the
        speed book, once it streams, the rest of the reply expected of it at its rate."""
        now = time.monotonic()
        elapsed = (now - running.started_at) * 1000
        by_clock = max(0, round(running.estimate_ms - elapsed))
        job = running.entry.job
        if self.speeds is None or job.kind not in STREAMED_KINDS:
            return by_clock
        if running.first_token_at is None:
            # Still loading or reading its prompt: at least its whole reply is ahead.
            reply_ms = self.speeds.remaining_ms(job.model, job.num_predict, 0, job.prompt_chars)
            return max(by_clock, reply_ms)
        return self.speeds.remaining_ms(
            job.model, job.num_predict, running.tokens, job.prompt_chars
        )

    def _learn_live(self, speeds: SpeedBook) -> None:
        """What running jobs of models not measured yet show of their speed (eta.py)."""
        for running in self.running_jobs():
            job = running.entry.job
            if running.first_token_at is None or job.kind not in STREAMED_KINDS:
                continue
            if speeds.measured(job.model):
                continue
            loaded = running.server.loaded
            speeds.observe_live(
                job.model,
                first_token_ms=(running.first_token_at - running.started_at) * 1000,
                tokens=running.tokens,
                generating_ms=(
                    (running.last_token_at or running.first_token_at) - running.first_token_at
                )
                * 1000,
                prompt_chars=job.prompt_chars,
                loaded=loaded is not None and same_model(loaded, job.model),
            )

    def _reprice(self, entries: Iterable[Entry]) -> None:
        """Waiting jobs priced before the speed book's latest change, priced again."""
        speeds = self.speeds
        if speeds is None:
            return
        self._learn_live(speeds)
        # A price depends on these alone (at one version of the book), and a crowd's jobs
        # share a few: each priced once, not once per job, after every job that finishes.
        prices: dict[tuple[str, int, int | None, str], tuple[int, int]] = {}
        for entry in entries:
            if entry.priced_version == speeds.version:
                continue
            job = entry.job
            terms = (job.model, job.prompt_chars, job.num_predict, job.kind)
            price = prices.get(terms)
            if price is None:
                price = prices[terms] = (
                    speeds.estimate_ms(
                        job.model, job.prompt_chars, job.num_predict, job.model, kind=job.kind
                    ),
                    speeds.load_ms(job.model, job.kind),
                )
            entry.estimate_ms, entry.load_ms = price
            entry.priced_version = speeds.version

    def progressed(self) -> None:
        self.progress_at = time.monotonic()
        self.progress_wall = time.time()

    def holds_work(self) -> bool:
        """A running job, or waiting ones while not paused (a paused lane is idle by choice)."""
        return bool(self.running_jobs()) or (len(self) > 0 and not self.paused)

    def processing_rate(self) -> float:
        """Jobs finished per second over the last minute."""
        since = time.monotonic() - RATE_WINDOW_S
        return len([t for t in self.finished_at if t > since]) / RATE_WINDOW_S

    # Models' use, for the model manager.

    def used(self, job: Job, server: str) -> None:
        """The job is over on `server`: its model was used there now. An unload forgets the
        model's use there only: its use on the other servers holding it still stands."""
        key = canonical_model_name(job.model)
        if job.kind != "unload":
            self.last_used_on.setdefault(key, {})[server] = time.time()
            return
        used_on = self.last_used_on.get(key)
        if used_on is not None:
            used_on.pop(server, None)
            if not used_on:
                del self.last_used_on[key]

    def model_activity(self) -> list[ModelActivity]:
        """Queued and running work per model, and when each was last used, on each server
        and on any."""
        queued: Counter[str] = Counter(canonical_model_name(e.job.model) for e in self)
        running: Counter[str] = Counter()
        running_on: dict[str, set[str]] = {}
        for one in self.running_jobs():
            key = canonical_model_name(one.entry.job.model)
            running[key] += 1
            running_on.setdefault(key, set()).add(one.server.name)
        names = set(queued) | set(self.last_used_on) | set(running)
        activity: list[ModelActivity] = []
        for name in sorted(names):
            used_on = self.last_used_on.get(name, {})
            activity.append(
                ModelActivity(
                    model=name,
                    queued=queued[name],
                    running=running[name],
                    last_used_at=max(used_on.values(), default=None),
                    last_used_on=dict(used_on),
                    running_on=sorted(running_on.get(name, ())),
                )
            )
        return activity

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

    def snapshot(self) -> list[Placed]:
        """Every waiting job's position and wait, in the order they will run: the one place
        both are computed (the position broadcaster, admission's first answer, its retry
        hint and the status broadcast all read them from here)."""
        ordered = self.ordered()
        self._reprice(ordered)
        servers = self._in_play()
        sims = [
            SimServer(
                name=s.name,
                free_at_ms=self.remaining_ms(s.running) if s.running is not None else 0,
                loaded=self._held_next(s),
            )
            for s in servers
        ]
        played_on = [
            (s, s.running, sim.loaded, sim.free_at_ms) for s, sim in zip(servers, sims, strict=True)
        ]
        by_name = {s.name: s for s in servers}
        # The order they will run in: with one server, the ordering's model grouping played
        # forward (a job for the held model further back goes before a swap); a pool's
        # servers are laid out in the queue's order.
        policy = self.ordering.policy
        grouped = len(sims) == 1 and policy.pool == "affinity" and policy.group_bound > 0
        if grouped:
            run = grouped_order(
                [entry.model for entry in ordered],
                [entry.overtaken for entry in ordered],
                sims[0].loaded,
                policy.group_bound,
            )
        else:
            run = list(range(len(ordered)))
        laid: list[int] = []
        played = pool_waits(
            sims,
            [(ordered[i].estimate_ms, ordered[i].load_ms, ordered[i].model) for i in run],
            lambda sim, at: self.can_run(by_name[sim.name], ordered[run[at]]),
            laid,
        )
        waits = [0] * len(ordered)
        on = [0] * len(ordered)
        for at, index in enumerate(run):
            waits[index] = played[at]
            on[index] = laid[at]
        placed = [
            Placed(entry, index + 1, wait_ms)
            for index, (entry, wait_ms) in enumerate(zip(ordered, waits, strict=True))
        ]
        self._tail = _Tail(
            changes=self._changes,
            priced=self.speeds.version if self.speeds is not None else -1,
            servers=played_on,
            sims=sims,
            grouped=grouped,
            placed={
                p.entry.request_id: (p.position, p.wait_ms, on[index])
                for index, p in enumerate(placed)
            },
            last_arrival=max((entry.arrival for entry in ordered), default=-1),
        )
        return placed

    def _in_play(self) -> list[Server]:
        """The servers waiting jobs are laid onto: those in rotation (all, when none is)."""
        return [s for s in self.servers.values() if s.in_rotation] or list(self.servers.values())

    def _tail_now(self) -> tuple[_Tail, list[int]] | None:
        """The last snapshot while it still holds, with how far each of its servers' running
        jobs got since (ms, to add to its waits); None when it no longer does."""
        tail = self._tail
        if tail is None or tail.changes != self._changes:
            return None
        if self.ordering.policy.aging_s > 0 and self._classes["batch"]:
            # Batch jobs move up as they wait: the order changes with the clock alone.
            return None
        if self.speeds is not None:
            self._learn_live(self.speeds)
            if self.speeds.version != tail.priced:
                return None
        if len(tail.servers) != len(in_play := self._in_play()):
            return None
        moved: list[int] = []
        for (server, running, held, left_ms), now in zip(tail.servers, in_play, strict=True):
            if server is not now or server.running is not running:
                return None
            if self._held_next(server) != held:
                return None
            moved.append((self.remaining_ms(running) if running is not None else 0) - left_ms)
        if len(set(moved)) > 1:
            # A pool whose servers' jobs did not all move on alike (one stalled before its
            # first token, one went on streaming): the play might now lay the jobs onto other
            # servers than it did.
            return None
        return tail, moved

    def _extend(self, entry: Entry) -> bool:
        """Place a job just pushed from the last snapshot, when it goes behind every waiting
        job: its position is the lane's length, its wait the play's end on the server it is
        laid onto (O(servers), where a snapshot is O(lane)). False when that cannot be told
        so cheaply (the snapshot no longer holds; another caller's or a higher class's jobs
        wait, which it may not pass or follow; the model grouping could move it)."""
        found = self._tail_now()
        if found is None:
            return False
        tail, moved = found
        if entry.arrival <= tail.last_arrival:
            return False
        rank = PRIORITY_RANK[entry.priority]
        if any(PRIORITY_RANK[name] > rank for name in self._classes):
            return False
        if self.ordering.policy.fair_share and len(self._keys) > 1:
            return False
        if tail.grouped and len(self._models) > 1:
            return False
        self._reprice([entry])
        servers = [server for server, _, _, _ in tail.servers]
        able = [i for i, s in enumerate(servers) if self.can_run(s, entry)] or range(len(servers))
        # Laid on as of now (each server's running job as far as it got), kept as of the
        # snapshot like the rest.
        sims = tail.sims
        for sim, delta in zip(sims, moved, strict=True):
            sim.free_at_ms += delta
        laid: list[int] = []
        wait = lay(sims, able, entry.estimate_ms, entry.load_ms, entry.model, laid)
        for sim, delta in zip(sims, moved, strict=True):
            sim.free_at_ms -= delta
        tail.placed[entry.request_id] = (len(self._waiting), wait - moved[laid[0]], laid[0])
        tail.last_arrival = entry.arrival
        return True

    @staticmethod
    def _held_next(server: Server) -> str | None:
        """The model `server` will hold when it is next free: its running job's (the lane
        learns it only when the job ends), else the one it holds."""
        running = server.running
        if running is None:
            return server.loaded
        job = running.entry.job
        return None if job.kind == "unload" else job.model

    def placement(self, request_id: str) -> Placed | None:
        """One waiting job's place; None when it is not waiting. Read from the last snapshot
        while it holds (a crowd's admissions in a row cost one snapshot, not one each)."""
        entry = self._waiting.get(request_id)
        if entry is None:
            return None
        found = self._tail_now()
        if found is None:
            self.snapshot()
            assert self._tail is not None
            found = (self._tail, [0] * len(self._tail.servers))
        tail, moved = found
        position, wait_ms, on = tail.placed[request_id]
        return Placed(entry, position, max(0, wait_ms + moved[on]))
