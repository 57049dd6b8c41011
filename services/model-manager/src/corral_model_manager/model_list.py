"""The backend's model names, cached, and their broadcast to every gateway.

Gateways use the list to answer a request for a model the backend lacks at once, instead of
after a wait in the queue. When a name is missing from their copy they ask for a forced refresh
(a model may have been pulled behind Corral's back); a burst of such requests must not become a
burst of backend calls, so concurrent refreshes share one `/api/tags` and a list younger than a
second is good enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from corral_common.broker import encode
from corral_common.errors import CorralError
from corral_common.messages import ModelList
from corral_common.model_names import canonical_model_name
from corral_common.timeouts import within

log = structlog.get_logger(__name__)

REUSE_S = 1.0


def names_of(tags: Any) -> list[str]:
    """Canonical names from an `/api/tags` answer, sorted, without duplicates."""
    models = tags.get("models") if isinstance(tags, dict) else None
    names: set[str] = set()
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and name:
            names.add(canonical_model_name(name))
    return sorted(names)


class ModelNames:
    def __init__(
        self,
        fetch_tags: Callable[[], Awaitable[Any]],
        *,
        reuse_s: float = REUSE_S,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._fetch_tags = fetch_tags
        self._reuse_s = reuse_s
        self._on_change = on_change
        self._clock = clock
        self._wall = wall
        self._names: list[str] | None = None
        # When the fetch that produced `_names` started: a list is as fresh as its request.
        self._fetched_at: float | None = None
        self._inflight: tuple[float, asyncio.Task[list[str]]] | None = None
        self.updated_at: float | None = None

    @property
    def names(self) -> list[str] | None:
        """The last list fetched, or None before the first fetch succeeded."""
        return self._names

    async def current(self) -> list[str]:
        return self._names if self._names is not None else await self.refresh()

    async def refresh(self, *, newer_than: float | None = None) -> list[str]:
        """A list whose fetch started at `newer_than` (monotonic) or later; by default, one
        at most `reuse_s` old. After a change made by Corral itself, pass the time of the
        change, so a fetch that started before it is not taken for the new state."""
        if newer_than is None:
            newer_than = self._clock() - self._reuse_s
        while True:
            if (
                self._names is not None
                and self._fetched_at is not None
                and self._fetched_at >= newer_than
            ):
                return self._names
            if self._inflight is not None:
                started, task = self._inflight
                if started >= newer_than:
                    return await asyncio.shield(task)
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                continue
            started = self._clock()
            task = asyncio.create_task(self._fetch(started), name="model-names")
            # A fetch whose every waiter left still finishes; its failure is then nobody's.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight = (started, task)
            return await asyncio.shield(task)

    async def _fetch(self, started: float) -> list[str]:
        try:
            names = names_of(await self._fetch_tags())
            changed = names != self._names
            self._names = names
            self._fetched_at = started
            self.updated_at = self._wall()
            if changed:
                self._on_change()
            return names
        finally:
            if self._inflight is not None and self._inflight[1] is asyncio.current_task():
                self._inflight = None


class ModelListBroadcaster:
    """Publishes the list on every change, on request, and every `interval_s` regardless."""

    def __init__(
        self,
        names: ModelNames,
        publish: Callable[[bytes], Awaitable[None]],
        *,
        interval_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._names = names
        self._publish = publish
        self._interval_s = interval_s
        self._wall = wall
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Broadcast soon (the list changed, or a gateway that just started asked)."""
        self._wake.set()

    async def publish(self) -> None:
        """Broadcast the current list now (nothing before the first successful fetch)."""
        names = self._names.names
        if names is None:
            return
        self._wake.clear()
        body = encode(ModelList(sent_at=self._wall(), models=names))
        try:
            await self._publish(body)
        except Exception as exc:
            log.warning("model list not broadcast", error=str(exc))

    async def run_forever(self) -> None:
        while True:
            # Cleared at the start of each round, not only on a broadcast: with the backend
            # down there is nothing to broadcast, and a wake left set would spin this loop.
            self._wake.clear()
            try:
                await self._names.refresh()
            except CorralError as exc:
                log.info("model list not refreshed", error=exc.message)
            await self.publish()
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), self._interval_s)
