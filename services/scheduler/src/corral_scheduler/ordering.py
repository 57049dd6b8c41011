"""Which waiting job runs next, and so where every waiting job stands.

Pure policy, no I/O, used by the lane for both choosing and positions, so what a client is told
is what will happen. Three rules, each configurable and each keeping the serial invariant (they
only reorder; one job still runs at a time):

- **priority with aging**: `interactive` before `normal` before `batch`; a batch job that has
  waited `aging_s` counts as normal, so batch work always progresses;
- **fair share**: within a class, callers (API key, or `X-Client-Id` until keys exist) take
  turns, least recently served first, each caller's own jobs in arrival order; one caller with
  fifty queued requests cannot starve another with one;
- **model grouping**: when the job due next needs a model swap and a job for the loaded model
  waits further back, that one may go first, but no job is ever overtaken more than
  `group_bound` times this way.

With a pool of servers (`assign`), the same order decides for every free server at once: the
job due next goes to a free server that already holds its model, else (after the grouping
rule has let the free servers take jobs for their own models) to the free server whose model
was used least recently, an empty one first. A job some server cannot run (a model it does
not have, a job aimed at another server) is left to the servers that can.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from corral_common.messages import PRIORITIES, Priority
from corral_common.model_names import same_model

# "affinity": the rules above; "round_robin": the job due next goes to the next free server in
# turn, models ignored (the naive pool, kept to measure against: bench/pool.py).
PoolPolicy = Literal["affinity", "round_robin"]

PRIORITY_RANK: dict[Priority, int] = {name: rank for rank, name in enumerate(PRIORITIES)}
ANONYMOUS = ""


class Waiting(Protocol):
    """What ordering needs of a lane entry."""

    @property
    def request_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def model(self) -> str: ...

    admitted_at: float
    # Admission order, taken when the delivery arrives (before any await), so jobs handed
    # over together after a failover keep their order whatever their admission awaits.
    arrival: int
    overtaken: int


class FreeServer(Protocol):
    """What pool assignment needs of a server with nothing to run."""

    @property
    def name(self) -> str: ...
    @property
    def loaded(self) -> str | None: ...
    @property
    def last_used(self) -> float: ...


W = TypeVar("W", bound=Waiting)
S = TypeVar("S", bound=FreeServer)


@dataclass(frozen=True)
class OrderingPolicy:
    fair_share: bool = True
    # Seconds of waiting after which a batch job counts as normal (0: no aging).
    aging_s: float = 30.0
    # How many times any job may be overtaken by jobs for the loaded model (0: no grouping).
    group_bound: int = 0
    pool: PoolPolicy = "affinity"


class Ordering:
    def __init__(self, policy: OrderingPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._clock = clock
        # When each caller was last served, as a sequence number: lower goes first.
        self._last_served: dict[str, int] = {}
        self._served = 0

    def effective_class(self, entry: Waiting, now: float) -> int:
        """Batch work rises to normal after `aging_s` of waiting, so it always progresses.
        Nothing else ages: were normal work to rise to interactive by age, a flood of old
        requests from one caller would outrank everyone's fresh ones and undo fair share
        (measured in docs/queue.md)."""
        rank = PRIORITY_RANK[entry.priority]
        if entry.priority == "batch" and self.policy.aging_s > 0:
            waited = max(0.0, now - entry.admitted_at)
            if waited >= self.policy.aging_s:
                rank = PRIORITY_RANK["normal"]
        return rank

    def order(self, entries: Iterable[Waiting]) -> list[Waiting]:
        """Every waiting entry in the order it will run."""
        now = self._clock()
        queues: dict[str, list[tuple[int, int, Waiting]]] = {}
        fair_share = self.policy.fair_share
        ages = self.policy.aging_s > 0
        for entry in entries:
            key = entry.key if fair_share else ANONYMOUS
            priority = entry.priority
            rank = (
                self.effective_class(entry, now)
                if ages and priority == "batch"
                else PRIORITY_RANK[priority]
            )
            queues.setdefault(key, []).append((rank, entry.arrival, entry))
        for queue in queues.values():
            queue.sort(key=lambda item: (item[0], item[1]))
        if len(queues) == 1:
            # One caller (or no fair share): its own order is the order.
            return [item[2] for queue in queues.values() for item in queue]
        # The callers' queues merged: the caller whose next job is most urgent, then least
        # recently served, then oldest, then first seen (what a scan in `queues`' order would
        # pick at a tie). A heap, not a scan of every caller per job: a lane of hundreds of
        # callers is ordered at every admission and every position round.
        step = self._served
        heap: list[tuple[int, int, int, int]] = []
        for seen, (key, queue) in enumerate(queues.items()):
            head_class, head_arrival, _ = queue[0]
            heap.append((head_class, self._last_served.get(key, -1), head_arrival, seen))
        heapq.heapify(heap)
        listed = list(queues.values())
        heads = [0] * len(listed)
        ordered: list[Waiting] = []
        while heap:
            _, _, _, seen = heap[0]
            queue = listed[seen]
            ordered.append(queue[heads[seen]][2])
            heads[seen] += 1
            step += 1
            if heads[seen] == len(queue):
                heapq.heappop(heap)
            else:
                head_class, head_arrival, _ = queue[heads[seen]]
                heapq.heapreplace(heap, (head_class, step, head_arrival, seen))
        return ordered

    def choose(self, entries: Iterable[Waiting], loaded_model: str | None) -> Waiting:
        """The entry one server holding `loaded_model` runs now: the first in order, unless
        grouping lets a job for the loaded model overtake (within the bound)."""
        only = _Server("only", loaded_model, 0.0)
        [(chosen, _)] = self.assign(list(entries), [only], lambda _server, _entry: True)
        return chosen

    def assign(
        self,
        entries: Sequence[W],
        free: Sequence[S],
        can_run: Callable[[S, W], bool],
    ) -> list[tuple[W, S]]:
        """Which waiting entry each free server runs now (module docstring); servers left
        without one stay free. Counts overtakes and turns as the jobs are handed out."""
        waiting: list[W] = self.order(entries)  # type: ignore[assignment]
        idle = list(free)
        handed: list[tuple[W, S]] = []
        while idle and waiting:
            head_at = next(
                (i for i, e in enumerate(waiting) if any(can_run(s, e) for s in idle)), None
            )
            if head_at is None:
                break
            head = waiting[head_at]
            if self.policy.pool == "round_robin":
                server = next(s for s in idle if can_run(s, head))
                chosen_at = head_at
            else:
                server, chosen_at = self._affinity(waiting, head_at, idle, can_run)
            for ahead in waiting[head_at:chosen_at]:
                if can_run(server, ahead):
                    ahead.overtaken += 1
            chosen = waiting.pop(chosen_at)
            idle.remove(server)
            self.served(chosen)
            handed.append((chosen, server))
        return handed

    def _affinity(
        self, waiting: list[W], head_at: int, idle: list[S], can_run: Callable[[S, W], bool]
    ) -> tuple[S, int]:
        head = waiting[head_at]
        able = [s for s in idle if can_run(s, head)]
        holding = next((s for s in able if same_model(s.loaded or "", head.model)), None)
        if holding is not None:
            return holding, head_at
        # Grouping: a free server may first take a job for the model it holds, from further
        # back, as long as no job it would pass has been passed `group_bound` times.
        bound = self.policy.group_bound
        best: tuple[int, S] | None = None
        for server in idle if bound > 0 else ():
            if server.loaded is None:
                continue
            for index in range(head_at, len(waiting)):
                entry = waiting[index]
                if not can_run(server, entry):
                    continue
                if same_model(entry.model, server.loaded):
                    if best is None or index < best[0]:
                        best = (index, server)
                    break
                if entry.overtaken >= bound:
                    break
        if best is not None:
            return best[1], best[0]
        # A swap: on an empty server, else the one whose model was used least recently.
        return min(able, key=lambda s: (s.loaded is not None, s.last_used)), head_at

    def served(self, entry: Waiting) -> None:
        self._served += 1
        key = entry.key if self.policy.fair_share else ANONYMOUS
        self._last_served[key] = self._served


@dataclass(frozen=True)
class _Server:
    """A free server described by its fields alone (`Ordering.choose`'s one server)."""

    name: str
    loaded: str | None
    last_used: float
