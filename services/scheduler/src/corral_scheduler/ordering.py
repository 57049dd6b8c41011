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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from corral_common.messages import PRIORITIES, Priority
from corral_common.model_names import same_model

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


@dataclass(frozen=True)
class OrderingPolicy:
    fair_share: bool = True
    # Seconds of waiting after which a batch job counts as normal (0: no aging).
    aging_s: float = 30.0
    # How many times any job may be overtaken by jobs for the loaded model (0: no grouping).
    group_bound: int = 0


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
        for entry in entries:
            key = entry.key if self.policy.fair_share else ANONYMOUS
            item = (self.effective_class(entry, now), entry.arrival, entry)
            queues.setdefault(key, []).append(item)
        for queue in queues.values():
            queue.sort(key=lambda item: (item[0], item[1]))
        turn = {key: self._last_served.get(key, -1) for key in queues}
        heads = {key: 0 for key in queues}
        ordered: list[Waiting] = []
        step = self._served
        while queues:
            # The caller whose next job is most urgent, then least recently served, then oldest.
            key = min(
                queues,
                key=lambda k: (queues[k][heads[k]][0], turn[k], queues[k][heads[k]][1]),
            )
            ordered.append(queues[key][heads[key]][2])
            heads[key] += 1
            step += 1
            turn[key] = step
            if heads[key] == len(queues[key]):
                del queues[key]
        return ordered

    def choose(self, entries: Iterable[Waiting], loaded_model: str | None) -> Waiting:
        """The entry to run now: the first in order, unless grouping lets a job for the loaded
        model overtake (within the bound)."""
        ordered = self.order(entries)
        chosen_at = 0
        bound = self.policy.group_bound
        if (
            bound > 0
            and loaded_model is not None
            and not same_model(ordered[0].model, loaded_model)
        ):
            for index, entry in enumerate(ordered):
                if any(ahead.overtaken >= bound for ahead in ordered[:index]):
                    break
                if same_model(entry.model, loaded_model or ""):
                    chosen_at = index
                    break
        for ahead in ordered[:chosen_at]:
            ahead.overtaken += 1
        chosen = ordered[chosen_at]
        self.served(chosen)
        return chosen

    def served(self, entry: Waiting) -> None:
        self._served += 1
        key = entry.key if self.policy.fair_share else ANONYMOUS
        self._last_served[key] = self._served
