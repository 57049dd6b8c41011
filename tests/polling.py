"""Waiting on a condition another process will make true (a queue depth, a metric, readiness).

Where a test can await the event itself (a stream's next line, the emulator's server-side
`wait`), it does. Across a process boundary with no push channel, it polls here: a bounded loop
that returns the moment the condition holds and fails loudly when it never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_INTERVAL_S = 0.02


async def eventually(
    probe: Callable[[], Awaitable[bool]], within_s: float = 10.0, what: str = "the condition"
) -> float:
    """Poll `probe` until it is true; returns how long that took."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what} did not happen within {within_s}s")
        await asyncio.sleep(POLL_INTERVAL_S)
    return time.monotonic() - started


def until(probe: Callable[[], bool], within_s: float = 10.0, what: str = "the condition") -> float:
    """`eventually` for synchronous probes (a fixture reading another process's log)."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > within_s:
            raise AssertionError(f"{what} did not happen within {within_s}s")
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - started
