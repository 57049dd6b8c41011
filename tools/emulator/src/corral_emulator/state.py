"""Everything the emulator remembers between requests, and the AppKeys it lives under."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from corral_emulator.activity import Activity, ChangeNotifier
from corral_emulator.config import EmulatorConfig
from corral_emulator.durations import NANOS_PER_SECOND
from corral_emulator.failures import FailureQueue
from corral_emulator.models import ModelCatalogue
from corral_emulator.request_log import RequestLog
from corral_emulator.runners import RunnerPool


class HoldGate:
    """While held, generations wait before their first token; lets tests line requests up."""

    def __init__(self, changes: ChangeNotifier) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._changes = changes
        self.waiting = 0

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def hold(self) -> None:
        self._open.clear()
        self._changes.notify()

    def release(self) -> None:
        self._open.set()
        self._changes.notify()

    async def pass_through(self) -> None:
        if self._open.is_set():
            return
        self.waiting += 1
        self._changes.notify()
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1
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
        self.gate = HoldGate(self.changes)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every recorded change."""
        await self.changes.wait_for(predicate)

    def models_changed(self) -> None:
        self.catalogue = ModelCatalogue.of(self.config.models)
        self.runners.retain({spec.full_name for spec in self.config.models})

    def reset(self) -> None:
        """Zero the counters and records, forget failures, unload everything, open the gate."""
        self.runners.clear()
        self.activity.reset()
        self.failures.clear()
        self.requests.clear()
        self.gate.release()

    def stats(self) -> dict[str, object]:
        return {
            **self.activity.counters.to_mapping(),
            "loads": self.runners.loads,
            "unloads": self.runners.unloads,
            "loaded": [runner.spec.full_name for runner in self.runners.loaded()],
            "held": self.gate.waiting,
            "holding": self.gate.held,
            "pending_failures": self.failures.pending(),
        }


CONFIG_KEY = web.AppKey("corral_emulator.config", EmulatorConfig)
STATE_KEY = web.AppKey("corral_emulator.state", EmulatorState)
