"""The model-manager lookup: cached, shared by concurrent callers, unknown when it is silent."""

from __future__ import annotations

import asyncio
from typing import Any

from corral_common.errors import CorralError, ErrorType
from corral_session_store.model_info import CachedContextLengths


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_answers_are_cached_and_shared() -> None:
    calls: list[str] = []
    release = asyncio.Event()
    fetching = asyncio.Event()

    async def fetch(model: str) -> Any:
        calls.append(model)
        fetching.set()
        await release.wait()
        return 256

    clock = Clock()
    lengths = CachedContextLengths(fetch, timeout_s=5, ttl_s=60, failure_ttl_s=5, clock=clock)
    waiting = [asyncio.create_task(lengths.context_length("tiny")) for _ in range(5)]
    # The first lookup is under way; the other four, started in the same loop pass, have joined
    # it by the time this test runs again.
    await fetching.wait()
    release.set()
    assert await asyncio.gather(*waiting) == [256] * 5
    assert calls == ["tiny"]
    assert await lengths.context_length("tiny") == 256
    assert calls == ["tiny"]
    clock.now = 61
    assert await lengths.context_length("tiny") == 256
    assert calls == ["tiny", "tiny"]


async def test_silence_and_errors_are_unknown_for_a_while() -> None:
    calls: list[str] = []

    async def fetch(model: str) -> Any:
        calls.append(model)
        if model == "slow":
            await asyncio.Event().wait()
        if model == "missing":
            raise CorralError(ErrorType.MODEL_NOT_FOUND, "no such model")
        return "nonsense"

    clock = Clock()
    lengths = CachedContextLengths(fetch, timeout_s=0.05, ttl_s=60, failure_ttl_s=5, clock=clock)
    assert await lengths.context_length("slow") is None
    assert await lengths.context_length("missing") is None
    assert await lengths.context_length("odd") is None
    assert await lengths.context_length("slow") is None
    assert calls == ["slow", "missing", "odd"]
    clock.now = 6
    assert await lengths.context_length("missing") is None
    assert calls.count("missing") == 2
