"""The services' garbage-collector regime (corral_common.gc_pauses): the started heap frozen,
the oldest generation collected on a period instead of on CPython's growth rule, every
collection timed. Real collections of this test process; nothing is mocked."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web

from corral_common.gc_pauses import GC_PAUSES, collector_ctx, watch_gc_pauses


def timed(generation: int) -> float:
    """How many collections of `generation` the histogram has counted."""
    for metric in GC_PAUSES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels["generation"] == str(generation):
                return sample.value
    return 0.0


@contextmanager
def oldest_collections() -> Iterator[list[int]]:
    """Counts the oldest generation's collections while inside (gc.callbacks, as gc_pauses)."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)


@asynccontextmanager
async def started(full_interval_s: float) -> AsyncIterator[web.Application]:
    app = web.Application()
    app.cleanup_ctx.append(collector_ctx(full_interval_s))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


def grow_the_heap() -> list[list[int]]:
    """Enough surviving containers for many young collections and a heap grown well past a
    quarter: under CPython's rule, that collects the oldest generation."""
    return [[] for _ in range(400_000)]


def test_every_collection_is_timed_by_generation() -> None:
    watch_gc_pauses()
    watch_gc_pauses()  # once per process, however often called
    # CPython's own collections are held off meanwhile: one started by the allocations in
    # between would be counted too (it was, once in a full run).
    enabled = gc.isenabled()
    gc.disable()
    try:
        before = (timed(0), timed(2))
        gc.collect(0)
        gc.collect()
        after = (timed(0), timed(2))
    finally:
        if enabled:
            gc.enable()
    assert after == (before[0] + 1, before[1] + 1)


async def test_the_started_heap_is_frozen_and_the_oldest_generation_left_to_the_period() -> None:
    thresholds = gc.get_threshold()
    async with started(full_interval_s=3600):
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[:2] == thresholds[:2]
        with oldest_collections() as seen:
            heap = grow_the_heap()
        assert seen == [], "the growth rule collected the oldest generation"
        del heap
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


async def test_with_no_period_cpythons_own_rule_collects_the_oldest_generation() -> None:
    """The case above with the rule left on: the same growth does collect (so that test can
    fail)."""
    async with started(full_interval_s=0):
        assert gc.get_freeze_count() > 0
        with oldest_collections() as seen:
            heap = grow_the_heap()
        assert seen != []
        del heap
    assert gc.get_freeze_count() == 0


async def test_the_oldest_generation_is_collected_every_period() -> None:
    collected = asyncio.Event()

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            collected.set()

    async with started(full_interval_s=0.01):
        gc.callbacks.append(callback)
        try:
            await asyncio.wait_for(collected.wait(), timeout=10)
        finally:
            gc.callbacks.remove(callback)


async def test_a_due_collection_waits_while_the_process_allocates_fast_but_not_for_ever() -> None:
    """A crowd arriving allocates fast: the oldest generation's collection is put off then
    (a pause of a whole heap is what every arriving client would wait for), and comes once
    the allocating stops, or after `MAX_DEFERRALS` periods of it."""
    period = 0.05
    collected = asyncio.Event()

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            collected.set()

    async def allocate(until: Callable[[], bool]) -> None:
        """Allocates in loop callbacks, one batch each (the collector's task runs between
        them), until `until()`."""
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        kept: list[list[int]] = []

        def batch() -> None:
            if until():
                finished.set()
                return
            # Thousands of young collections a second, far over BUSY_YOUNG_PER_S.
            kept.extend([] for _ in range(20_000))
            del kept[:10_000]
            loop.call_soon(batch)

        loop.call_soon(batch)
        await finished.wait()

    async with started(full_interval_s=period):
        gc.callbacks.append(callback)
        try:
            began = time.monotonic()
            # Busy for three periods: put off all along.
            await allocate(lambda: time.monotonic() - began > 3 * period)
            assert not collected.is_set()
            # Still busy: collected all the same, within MAX_DEFERRALS periods.
            await asyncio.wait_for(allocate(collected.is_set), timeout=10)
            collected.clear()
            # Quiet: the next period collects.
            await asyncio.wait_for(collected.wait(), timeout=10)
        finally:
            gc.callbacks.remove(callback)
