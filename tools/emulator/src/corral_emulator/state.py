"""Everything the emulator remembers between requests, and the AppKeys it lives under."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

from aiohttp import web

from corral_emulator.activity import Activity, ChangeNotifier
from corral_emulator.blobs import BlobStore
from corral_emulator.config import EmulatorConfig
from corral_emulator.durations import NANOS_PER_SECOND
from corral_emulator.failures import FailureQueue
from corral_emulator.models import ModelCatalogue, ModelSpec
from corral_emulator.request_log import RequestLog
from corral_emulator.runners import RunnerPool
from corral_emulator.timeline import Timeline


class GatePurpose(StrEnum):
    GENERATION = "generation"
    """Waits before its first token."""
    EMBED = "embed"
    """Waits after its model is loaded, before computing vectors."""
    PULL = "pull"
    """Waits after announcing its weights layer, before any bytes "arrive"."""


class HoldGate:
    """While held, generations, embeddings and pulls wait; lets tests line requests up."""

    def __init__(self, changes: ChangeNotifier) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._changes = changes
        self._waiting: Counter[GatePurpose] = Counter()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    @property
    def waiting(self) -> int:
        """Generations waiting (what the `held` stat has always counted)."""
        return self._waiting[GatePurpose.GENERATION]

    def waiting_for(self, purpose: GatePurpose) -> int:
        return self._waiting[purpose]

    def hold(self) -> None:
        self._open.clear()
        self._changes.notify()

    def release(self) -> None:
        self._open.set()
        self._changes.notify()

    async def pass_through(self, purpose: GatePurpose = GatePurpose.GENERATION) -> None:
        if self._open.is_set():
            return
        self._waiting[purpose] += 1
        self._changes.notify()
        try:
            await self._open.wait()
        finally:
            self._waiting[purpose] -= 1
            self._changes.notify()


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.catalogue = ModelCatalogue.of(config.models)
        self.changes = ChangeNotifier()
        self.runners = RunnerPool(
            load_seconds=lambda: self.config.load_ms / 1000,
            default_keep_alive_ns=lambda: int(self.config.default_keep_alive_s * NANOS_PER_SECOND),
            on_change=self.changes.notify,
        )
        self.activity = Activity(self.changes)
        self.failures = FailureQueue()
        self.requests = RequestLog(config.record_limit)
        self.timeline = Timeline(self.changes)
        self.gate = HoldGate(self.changes)
        self.blobs = BlobStore()
        self.pushed: dict[str, ModelSpec] = {}
        """Models pushed to the "registry" (by full name); pulls find them too."""

    @property
    def registry(self) -> ModelCatalogue:
        """What pulls can fetch (the configured registry and what was pushed to it); read per
        pull, so `/_emulator/config` applies at once."""
        return ModelCatalogue.of((*self.config.registry, *self.pushed.values()))

    def push_model(self, spec: ModelSpec) -> None:
        self.pushed[spec.full_name] = spec
        self.changes.notify()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every recorded change."""
        await self.changes.wait_for(predicate)

    def models_changed(self) -> None:
        """Back to the configured models: pulled, copied and created ones are gone."""
        self.catalogue = ModelCatalogue.of(self.config.models)
        self.runners.retain({spec.full_name for spec in self.config.models})
        self.changes.notify()

    def put_model(self, spec: ModelSpec) -> None:
        """A model was pulled, copied or created (replacing any of that name)."""
        self.catalogue.put(spec)
        self.runners.refresh(spec)
        self.changes.notify()

    def remove_model(self, name: str) -> ModelSpec | None:
        """Delete a model; a loaded one is unloaded with it."""
        spec = self.catalogue.remove(name)
        if spec is not None:
            self.runners.retain({kept.full_name for kept in self.catalogue.specs})
            self.changes.notify()
        return spec

    def reset(self) -> None:
        """Zero the counters, the records and the request timeline, forget failures, unload
        everything, open the gate, and restore the configured models."""
        self.runners.clear()
        self.models_changed()
        self.activity.reset()
        self.failures.reset()
        self.requests.clear()
        self.timeline.clear()
        self.blobs.clear()
        self.pushed.clear()
        self.gate.release()

    def stats(self) -> dict[str, object]:
        return {
            **self.activity.counters.to_mapping(),
            **self.activity.management.to_mapping(),
            "loads": self.runners.loads,
            "unloads": self.runners.unloads,
            "loaded": [runner.spec.full_name for runner in self.runners.loaded()],
            "held": self.gate.waiting,
            "embeds_held": self.gate.waiting_for(GatePurpose.EMBED),
            "pulls_held": self.gate.waiting_for(GatePurpose.PULL),
            "holding": self.gate.held,
            "pending_failures": self.failures.pending(),
            "timeline_open": self.timeline.open,
            **self.failures.counts(),
        }


CONFIG_KEY = web.AppKey("corral_emulator.config", EmulatorConfig)
STATE_KEY = web.AppKey("corral_emulator.state", EmulatorState)
