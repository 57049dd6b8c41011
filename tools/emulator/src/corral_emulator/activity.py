"""The concurrency record: what the backend was doing on models, at once and in total, and the
model-management requests (pull, copy, create, delete) it served beside that."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class OperationKind(StrEnum):
    """Work that occupies a model in Ollama's scheduler; all of it counts as `active`."""

    GENERATION = "generation"
    """chat/generate producing tokens."""
    LOAD = "load"
    """An empty chat/generate/embed request: load the model and answer."""
    UNLOAD = "unload"
    """An empty chat/generate request with keep_alive 0."""
    EMBED = "embed"
    """/api/embed or /api/embeddings with input."""


class Outcome(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    """The client disconnected."""
    FAILED = "failed"
    """An injected failure ended it (midstream), or (pulls) the registry had no such model."""


@dataclass(slots=True)
class ActivityCounters:
    active: int = 0
    """Operations of every kind running now."""
    max_active: int = 0
    generations: int = 0
    """From here to `failed`: generations only, whatever else ran."""
    completed: int = 0
    cancelled: int = 0
    cancelled_midstream: int = 0
    """Cancelled after at least one response byte had been sent."""
    failed: int = 0
    active_by_model: Counter[str] = field(default_factory=Counter)
    max_active_by_model: Counter[str] = field(default_factory=Counter)
    operations: int = 0
    operations_by_kind: Counter[OperationKind] = field(default_factory=Counter)

    def to_mapping(self) -> dict[str, object]:
        by_kind = self.operations_by_kind
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
            "operations": self.operations,
            "operations_by_kind": {kind.value: by_kind[kind] for kind in OperationKind},
            # Flat copies, because /_emulator/wait only compares top-level numbers.
            "load_requests": by_kind[OperationKind.LOAD],
            "unload_requests": by_kind[OperationKind.UNLOAD],
            "embeds": by_kind[OperationKind.EMBED],
        }


@dataclass(slots=True)
class ModelManagementCounters:
    """Requests that change the catalogue. Ollama runs these beside generations, so they are
    not `active`."""

    pulls: int = 0
    """Started (the name was valid)."""
    pulling: int = 0
    """Running now."""
    pulls_completed: int = 0
    pulls_failed: int = 0
    pulls_cancelled: int = 0
    deletes: int = 0
    """From here on: successful requests."""
    copies: int = 0
    creates: int = 0

    def to_mapping(self) -> dict[str, object]:
        return {
            "pulls": self.pulls,
            "pulling": self.pulling,
            "pulls_completed": self.pulls_completed,
            "pulls_failed": self.pulls_failed,
            "pulls_cancelled": self.pulls_cancelled,
            "deletes": self.deletes,
            "copies": self.copies,
            "creates": self.creates,
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
        self.management = ModelManagementCounters()
        self.changes = changes
        # Bumped by reset(), so work that straddles a reset does not skew new counters.
        self._epoch = 0

    def start(self, model: str, kind: OperationKind = OperationKind.GENERATION) -> OperationTicket:
        counters = self.counters
        counters.active += 1
        counters.max_active = max(counters.max_active, counters.active)
        counters.operations += 1
        counters.operations_by_kind[kind] += 1
        if kind is OperationKind.GENERATION:
            counters.generations += 1
        counters.active_by_model[model] += 1
        counters.max_active_by_model[model] = max(
            counters.max_active_by_model[model], counters.active_by_model[model]
        )
        self.changes.notify()
        return OperationTicket(self, model, kind, self._epoch)

    def finish(self, ticket: OperationTicket, outcome: Outcome, midstream: bool) -> None:
        if ticket.epoch == self._epoch:
            counters = self.counters
            counters.active -= 1
            counters.active_by_model[ticket.model] -= 1
            if ticket.kind is OperationKind.GENERATION:
                if outcome is Outcome.COMPLETED:
                    counters.completed += 1
                elif outcome is Outcome.FAILED:
                    counters.failed += 1
                else:
                    counters.cancelled += 1
                    counters.cancelled_midstream += int(midstream)
        self.changes.notify()

    def start_pull(self) -> PullTicket:
        self.management.pulls += 1
        self.management.pulling += 1
        self.changes.notify()
        return PullTicket(self, self._epoch)

    def finish_pull(self, ticket: PullTicket, outcome: Outcome) -> None:
        if ticket.epoch == self._epoch:
            management = self.management
            management.pulling -= 1
            if outcome is Outcome.COMPLETED:
                management.pulls_completed += 1
            elif outcome is Outcome.FAILED:
                management.pulls_failed += 1
            else:
                management.pulls_cancelled += 1
        self.changes.notify()

    def deleted(self) -> None:
        self.management.deletes += 1
        self.changes.notify()

    def copied(self) -> None:
        self.management.copies += 1
        self.changes.notify()

    def created(self) -> None:
        self.management.creates += 1
        self.changes.notify()

    def reset(self) -> None:
        self.counters = ActivityCounters()
        self.management = ModelManagementCounters()
        self._epoch += 1
        self.changes.notify()


@dataclass(slots=True)
class OperationTicket:
    """One running operation on a model; finish() it exactly once."""

    activity: Activity
    model: str
    kind: OperationKind
    epoch: int
    finished: bool = False

    def finish(self, outcome: Outcome, midstream: bool = False) -> None:
        if not self.finished:
            self.finished = True
            self.activity.finish(self, outcome, midstream)


@dataclass(slots=True)
class PullTicket:
    """One running pull; finish() it exactly once."""

    activity: Activity
    epoch: int
    finished: bool = False

    def finish(self, outcome: Outcome) -> None:
        if not self.finished:
            self.finished = True
            self.activity.finish_pull(self, outcome)
