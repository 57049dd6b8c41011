"""CPython's cyclic garbage collector, kept from stopping a busy service at the worst moment.

A collection of the oldest generation walks every tracked object with the event loop stopped.
A gateway holding 2,000 waiting streams holds hundreds of thousands of objects, and CPython
collects that generation whenever it has grown by a quarter, which is exactly while a crowd
arrives: measured on the crowd benchmark, 5 such collections of 85 to 200 ms each, and every
client that arrived during one waited for it (the late tail of "a first position within
100 ms"). So each service:

- freezes what it holds once started (modules, settings, connections: they live as long as the
  process), so that no collection walks it again (`gc.freeze`);
- collects the oldest generation every `CORRAL_GC_FULL_INTERVAL_S` (60 s) instead of on
  CPython's growth rule: at most one such pause a minute, whatever the load. The young
  generations are collected as always, so short-lived cycles (a request's) are freed at once;
  only cycles among objects that outlived two young collections wait for the period.
  `CORRAL_GC_FULL_INTERVAL_S=0` keeps CPython's own rule;
- puts a due collection off while the process is allocating fast (more than
  `BUSY_YOUNG_PER_S` young collections in the last second: a crowd arriving makes about 50 a
  second, the same crowd waiting about 0.5), for at most `MAX_DEFERRALS` periods;
- times every collection, by generation (`corral_gc_pause_seconds`: prometheus_client's own
  GC collector counts collections but does not time them), through `gc.callbacks`: two clock
  reads per collection, nothing per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

from aiohttp import web
from prometheus_client import Histogram

from corral_common.supervision import Task, supervised

GC_PAUSES = Histogram(
    "corral_gc_pause_seconds",
    "Time the process was stopped by one cyclic garbage collection, by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_BY_GENERATION = [GC_PAUSES.labels(str(generation)) for generation in range(3)]
_started: list[float] = [0.0]
# A count of young collections the oldest generation never reaches.
_NEVER = 2**31 - 1
# Young collections in the last second above which the process counts as busy.
BUSY_YOUNG_PER_S = 10
# A due collection is put off while busy for at most this many periods.
MAX_DEFERRALS = 5
_TICK_S = 1.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _BY_GENERATION[info["generation"]].observe(time.perf_counter() - _started[0])


def _young_collections() -> int:
    return int(gc.get_stats()[0]["collections"])


def watch_gc_pauses() -> None:
    """Time every collection from now on (once per process, however often called)."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


@contextlib.contextmanager
def frozen_heap(*, hold_oldest: bool) -> Iterator[None]:
    """What the process holds now frozen out of the collector's reach and, with `hold_oldest`,
    the oldest generation collected only when asked (`gc.collect()`), until left; then as it
    was (a process that runs apps one after another, a test run, collects as before)."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    if hold_oldest:
        gc.set_threshold(thresholds[0], thresholds[1], _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def _collect_every(full_interval_s: float) -> None:
    """The oldest generation's collections: one per period, put off while busy."""
    last = time.monotonic()
    collections = _young_collections()
    tick = min(_TICK_S, full_interval_s)
    while True:
        await asyncio.sleep(tick)
        now, before = time.monotonic(), collections
        collections = _young_collections()
        if now - last < full_interval_s:
            continue
        busy = (collections - before) / tick > BUSY_YOUNG_PER_S
        if busy and now - last < full_interval_s * MAX_DEFERRALS:
            continue
        gc.collect()
        last = time.monotonic()


def collector_ctx(
    full_interval_s: float,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context, appended after the app's own so that what they set up is frozen."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        with frozen_heap(hold_oldest=full_interval_s > 0):
            if full_interval_s <= 0:
                yield
                return
            collections = Task("full garbage collections", partial(_collect_every, full_interval_s))
            async with supervised(collections):
                yield

    return ctx
