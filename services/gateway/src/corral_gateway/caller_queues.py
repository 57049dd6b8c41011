"""This gateway's waiting jobs per caller, for the per-caller queue cap at the edge.

The scheduler refuses a caller's job over the cap when it admits it, which for a stream comes
after its client has had a 200 and maybe a queue position: the refusal could only be an error
line, on which clients do not back off (ollama-python raises with status -1, the OpenAI SDK
with a plain APIError). So a gateway counts its own callers' waiting jobs and refuses the one
over the cap itself, with the 429 and `Retry-After` a client acts on (ticket.py;
corral_common.queue_caps).

A job counts as waiting from the first position the scheduler tells it (its place in the lane,
behind others) until it starts or ends; a job the scheduler has not placed yet is not counted
(it may be running already: `started` comes only once the backend answers). So the edge never
counts more than the lane does and never refuses what the lane would take; what it misses (a
burst sent before any of it was placed, a caller spread over several gateways) the lane still
refuses, in the old way.
"""

from __future__ import annotations

import math
from collections import Counter

from corral_common.messages import FINAL_KINDS, Event, Position, SchedulerStatus


class CallerQueues:
    def __init__(self) -> None:
        # Every job of this gateway's callers in the lane, by request id: its caller.
        self._key_of: dict[str, str] = {}
        # Those placed behind others (told a position above 0): the wait last told to each.
        self._wait_ms: dict[str, int] = {}
        self._counts: Counter[str] = Counter()

    def waiting(self, key: str) -> int:
        """The caller's jobs waiting in the lane, as far as this gateway knows."""
        return self._counts[key]

    def add(self, request_id: str, key: str) -> None:
        """A job of caller `key` goes into the lane (counted once it is placed)."""
        self._key_of.setdefault(request_id, key)

    def remove(self, request_id: str) -> None:
        """The job's request is over here (answered, refused, or its client gone)."""
        self._unplace(request_id)
        self._key_of.pop(request_id, None)

    def heard(self, event: Event) -> None:
        """A scheduler's event for one of this gateway's jobs (the hub's observers)."""
        request_id = event.request_id
        key = self._key_of.get(request_id)
        if key is None:
            return
        if isinstance(event, Position) and event.position > 0:
            if request_id not in self._wait_ms:
                self._counts[key] += 1
            self._wait_ms[request_id] = event.estimated_wait_ms
        elif event.kind in ("position", "started") or event.kind in FINAL_KINDS:
            # Running (position 0, started) or over: no longer waiting.
            self._unplace(request_id)

    def _unplace(self, request_id: str) -> None:
        if self._wait_ms.pop(request_id, None) is None:
            return
        key = self._key_of[request_id]
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def retry_after_s(self, key: str, statuses: list[SchedulerStatus]) -> int | None:
        """When the caller's first waiting job should have finished, freeing a place: the
        soonest wait told to one of its jobs plus one job's time at the lane's rate. None when
        none of its jobs has been told a wait yet."""
        waits = [w for rid, w in self._wait_ms.items() if self._key_of.get(rid) == key]
        if not waits:
            return None
        rate = sum(s.queue.processing_rate for s in statuses)
        one_job_ms = 1000 / rate if rate > 0 else 0
        return max(1, math.ceil((min(waits) + one_job_ms) / 1000))


def lane_cap(statuses: list[SchedulerStatus]) -> int | None:
    """The schedulers' default per-caller cap, as their statuses tell it (the largest, should
    they differ, so the edge never refuses what the lane would take); None when no status
    tells one."""
    caps = [s.queue.max_queued_per_key for s in statuses if s.queue.max_queued_per_key is not None]
    return max(caps) if caps else None
