"""The cached model list: shared refreshes, reuse for a second, and freshness after a change."""

from __future__ import annotations

import asyncio
from typing import Any

from corral_common.messages import ModelList
from corral_model_manager.model_list import ModelListBroadcaster, ModelNames, names_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tags:
    """A fake `/api/tags` that the test releases when it wants."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)
        self.calls = 0
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> Any:
        self.calls += 1
        self.asked.set()
        await self.gate.wait()
        return {"models": [{"name": name, "model": name} for name in self.names]}


def test_names_are_canonical_sorted_and_unique() -> None:
    tags = {"models": [{"name": "Tiny"}, {"model": "tiny:latest"}, {"name": "a/b:1"}, "junk"]}
    assert names_of(tags) == ["a/b:1", "tiny:latest"]
    assert names_of({"models": None}) == []
    assert names_of("nonsense") == []


async def test_concurrent_refreshes_share_one_backend_call() -> None:
    tags = Tags("llama3.2")
    tags.gate.clear()
    names = ModelNames(tags, clock=Clock())
    waiting = [asyncio.create_task(names.refresh()) for _ in range(5)]
    await tags.asked.wait()
    tags.gate.set()
    assert await asyncio.gather(*waiting) == [["llama3.2:latest"]] * 5
    assert tags.calls == 1


async def test_a_list_younger_than_a_second_is_reused() -> None:
    tags = Tags("tiny")
    clock = Clock()
    names = ModelNames(tags, clock=clock)
    await names.refresh()
    clock.now += 0.9
    await names.refresh()
    assert tags.calls == 1
    clock.now += 0.2
    await names.refresh()
    assert tags.calls == 2
    assert await names.current() == ["tiny:latest"]
    assert tags.calls == 2


async def test_after_a_change_only_a_fetch_started_later_will_do() -> None:
    tags = Tags("tiny")
    clock = Clock()
    names = ModelNames(tags, clock=clock)
    tags.gate.clear()
    before = asyncio.create_task(names.refresh())
    await tags.asked.wait()
    # The model is pulled while that fetch is under way: its answer may predate the pull.
    tags.names.append("llama3.2")
    clock.now += 0.01
    after = asyncio.create_task(names.refresh(newer_than=clock()))
    tags.gate.set()
    assert await after == ["llama3.2:latest", "tiny:latest"]
    await before
    assert tags.calls == 2


async def test_changes_are_announced_and_broadcast() -> None:
    tags = Tags("tiny")
    changes: list[int] = []
    names = ModelNames(tags, on_change=lambda: changes.append(1), clock=Clock())
    published: list[ModelList] = []

    async def publish(body: bytes) -> None:
        published.append(ModelList.model_validate_json(body))

    broadcaster = ModelListBroadcaster(names, publish, interval_s=30, wall=lambda: 5.0)
    await broadcaster.publish()
    assert published == []  # nothing known yet, nothing said
    await names.refresh()
    assert changes == [1]
    await broadcaster.publish()
    assert published == [ModelList(sent_at=5.0, models=["tiny:latest"])]
    tags.names = ["tiny:latest"]
    await names.refresh(newer_than=200.0)
    assert tags.calls == 2
    assert changes == [1]  # same list: no announcement


async def test_the_broadcaster_publishes_at_start_and_when_woken() -> None:
    tags = Tags("tiny")
    names = ModelNames(tags, clock=Clock())
    published: asyncio.Queue[ModelList] = asyncio.Queue()

    async def publish(body: bytes) -> None:
        published.put_nowait(ModelList.model_validate_json(body))

    broadcaster = ModelListBroadcaster(names, publish, interval_s=3600)
    task = asyncio.create_task(broadcaster.run_forever())
    try:
        assert (await published.get()).models == ["tiny:latest"]
        broadcaster.wake()
        assert (await published.get()).models == ["tiny:latest"]
    finally:
        task.cancel()
