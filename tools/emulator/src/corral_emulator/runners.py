"""Loaded models ("runners") with Ollama's keep_alive and load bookkeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corral_emulator.durations import KeepAlive
from corral_emulator.models import ModelSpec
from corral_emulator.timestamps import rfc3339_nano


@dataclass(eq=False, slots=True)
class Runner:
    spec: ModelSpec
    context_length: int
    keep_alive_ns: int
    loading: asyncio.Task[None] | None = None
    in_flight: int = 0
    idle_since_ns: int = field(default_factory=time.time_ns)

    def expires_at_ns(self, now_ns: int) -> int:
        # A busy runner's idle timer has not started yet; Ollama reports now + duration.
        base = now_ns if self.in_flight else self.idle_since_ns
        return base + self.keep_alive_ns

    @property
    def is_loading(self) -> bool:
        return self.loading is not None and not self.loading.done()

    def describe(self, now_ns: int) -> dict[str, object]:
        """An `/api/ps` entry."""
        return {
            "name": self.spec.full_name,
            "model": self.spec.full_name,
            "size": self.spec.size,
            "size_vram": self.spec.size,
            "digest": self.spec.digest,
            "details": self.spec.details(),
            "expires_at": rfc3339_nano(self.expires_at_ns(now_ns)),
            "context_length": self.context_length,
        }


class RunnerPool:
    """Which models are loaded. Expiry is applied lazily whenever the pool is looked at."""

    def __init__(
        self,
        load_seconds: Callable[[], float],
        default_keep_alive_ns: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        # Callables, because /_emulator/config may change both while the server runs.
        self._load_seconds = load_seconds
        self._default_keep_alive_ns = default_keep_alive_ns
        self._on_change = on_change
        self._runners: dict[str, Runner] = {}
        self.loads = 0
        self.unloads = 0

    def loaded(self) -> list[Runner]:
        """Loaded (or loading) runners, longest remaining expiry first, like `/api/ps`."""
        now = time.time_ns()
        self._purge_expired(now)
        return sorted(self._runners.values(), key=lambda r: r.expires_at_ns(now), reverse=True)

    def get(self, spec: ModelSpec) -> Runner | None:
        self._purge_expired(time.time_ns())
        return self._runners.get(spec.full_name)

    async def acquire(
        self, spec: ModelSpec, context_length: int, keep_alive: KeepAlive | None
    ) -> Runner:
        """Attach a request to the model's runner, loading it first if needed.

        Concurrent requests for a model that is still loading share that one load. A request
        with a different context length forces a reload, as changed load-time options do.
        """
        self._purge_expired(time.time_ns())
        runner = self._runners.get(spec.full_name)
        if runner is None or runner.context_length != context_length:
            if runner is not None:
                self.unloads += 1
            runner = Runner(
                spec=spec,
                context_length=context_length,
                keep_alive_ns=self._default_keep_alive_ns(),
                loading=asyncio.ensure_future(self._load()),
            )
            self._runners[spec.full_name] = runner
            self.loads += 1
            self._on_change()
        if keep_alive is not None:
            runner.keep_alive_ns = keep_alive.nanos
        runner.in_flight += 1
        try:
            if runner.loading is not None:
                # Shielded: a client that gives up must not abort a load others wait on.
                await asyncio.shield(runner.loading)
        except BaseException:
            self.release(runner)
            raise
        return runner

    def release(self, runner: Runner) -> None:
        runner.in_flight -= 1
        if runner.in_flight > 0:
            return
        runner.idle_since_ns = time.time_ns()
        if runner.keep_alive_ns == 0:
            self._unload(runner)

    def expire(self, spec: ModelSpec) -> None:
        """Explicit unload (empty request with keep_alive 0): now if idle, else once idle."""
        runner = self._runners.get(spec.full_name)
        if runner is None:
            return
        runner.keep_alive_ns = 0
        runner.idle_since_ns = time.time_ns()
        if runner.in_flight == 0:
            self._unload(runner)

    def refresh(self, spec: ModelSpec) -> None:
        """A model was replaced under the same name: a loaded runner now reports the new
        spec. Ollama keeps such a runner too, as long as its weights and options match."""
        runner = self._runners.get(spec.full_name)
        if runner is not None:
            runner.spec = spec

    def clear(self) -> None:
        self._runners.clear()
        self.loads = 0
        self.unloads = 0

    async def _load(self) -> None:
        seconds = self._load_seconds()
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _unload(self, runner: Runner) -> None:
        # Identity check: a reloaded or reset pool may hold a newer runner under this name.
        if self._runners.get(runner.spec.full_name) is runner:
            del self._runners[runner.spec.full_name]
            self.unloads += 1
            self._on_change()

    def _purge_expired(self, now_ns: int) -> None:
        for runner in list(self._runners.values()):
            idle = runner.in_flight == 0 and not runner.is_loading
            if idle and runner.expires_at_ns(now_ns) <= now_ns:
                self._unload(runner)

    def retain(self, names: set[str]) -> None:
        """Unload runners of models that are no longer in the catalogue."""
        for runner in list(self._runners.values()):
            if runner.spec.full_name not in names:
                self._unload(runner)
