"""The concurrency record: how many generations ran, at once and in total, and how they ended."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    """The client disconnected."""
    FAILED = "failed"
    """An injected failure ended it (midstream)."""


@dataclass(slots=True)
class ActivityCounters:
    active: int = 0
    max_active: int = 0
    generations: int = 0
    completed: int = 0
    cancelled: int = 0
    cancelled_midstream: int = 0
    """Cancelled after at least one response byte had been sent."""
    failed: int = 0
    active_by_model: Counter[str] = field(default_factory=Counter)
    max_active_by_model: Counter[str] = field(default_factory=Counter)

    def to_mapping(self) -> dict[str, object]:
        return {
            "active": self.active,
            "max_active": self.max_active,
            "generations": self.generations,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "cancelled_midstream": self.cancelled_midstream,
            "failed": self.failed,
            "active_by_model": {k: v for k, v in self.active_by_model.items() if v},
            "max_active_by_model": dict(self.max_active_by_model),
        }


class ChangeNotifier:
    """Lets tests and `/_emulator/wait` wait for a condition instead of sleeping."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; bound it with `asyncio.timeout` if needed."""
        while True:
            # Take the event before testing, so a change in between is not missed.
            event = self._event
            if predicate():
                return
            await event.wait()


class Activity:
    def __init__(self, changes: ChangeNotifier) -> None:
        self.counters = ActivityCounters()
        self.changes = changes
        # Bumped by reset(), so generations that straddle a reset do not skew new counters.
        self._epoch = 0

    def start(self, model: str) -> GenerationTicket:
        counters = self.counters
        counters.active += 1
        counters.generations += 1
        counters.max_active = max(counters.max_active, counters.active)
        counters.active_by_model[model] += 1
        counters.max_active_by_model[model] = max(
            counters.max_active_by_model[model], counters.active_by_model[model]
        )
        self.changes.notify()
        return GenerationTicket(self, model, self._epoch)

    def finish(self, ticket: GenerationTicket, outcome: Outcome, midstream: bool) -> None:
        if ticket.epoch == self._epoch:
            counters = self.counters
            counters.active -= 1
            counters.active_by_model[ticket.model] -= 1
            if outcome is Outcome.COMPLETED:
                counters.completed += 1
            elif outcome is Outcome.FAILED:
                counters.failed += 1
            else:
                counters.cancelled += 1
                counters.cancelled_midstream += int(midstream)
        self.changes.notify()

    def reset(self) -> None:
        self.counters = ActivityCounters()
        self._epoch += 1
        self.changes.notify()


@dataclass(slots=True)
class GenerationTicket:
    """One running generation; finish() it exactly once."""

    activity: Activity
    model: str
    epoch: int
    finished: bool = False

    def finish(self, outcome: Outcome, midstream: bool = False) -> None:
        if not self.finished:
            self.finished = True
            self.activity.finish(self, outcome, midstream)
