"""Giving the memory of a crowd of waiting clients back to the operating system.

Ten thousand waiting streams took the gateway from 65 MB to over 300 MB of RSS, and every
per-request structure was freed afterwards, yet the RSS stayed: CPython keeps its small-object
arenas where any object still lives in them, and glibc's malloc keeps freed heap pages for
reuse (it returns only the top of the heap, past the last live block). `malloc_trim(0)` hands
back every free page in the heap, wherever it lies; a full `gc.collect()` first frees what only
cycles held.

Done once the gateway holds no job in the lane after it held at least `CROWD` at once
(places.py calls `release_soon` when its last one ends), after `IDLE_S` so a crowd's
stragglers are over and a new request meanwhile puts it off. Both calls walk the whole heap
(milliseconds to tens of them: a stall of the event loop), which is why it is done after a
crowd and not whenever a quiet gateway's last request ends. Elsewhere than glibc (musl,
macOS) it is a `gc.collect()` only.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

# How long the gateway must have held no job before its memory is handed back.
IDLE_S = 1.0
# Jobs held at once that make a crowd worth handing memory back after.
CROWD = 256


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release() -> bool:
    """Free what only cycles hold, then hand free heap pages back; True when glibc did."""
    gc.collect()
    return _TRIM is not None and bool(_TRIM(0))


class Releaser:
    """Calls `release` `idle_s` after `release_soon`, when the gateway held a crowd
    (`held` reached `crowd`) since the last release, unless `hold` said it is busy again
    meanwhile."""

    def __init__(self, idle_s: float = IDLE_S, crowd: int = CROWD) -> None:
        self.idle_s = idle_s
        self.crowd = crowd
        self.peak = 0
        self._timer: asyncio.TimerHandle | None = None
        self.released = 0

    def held(self, count: int) -> None:
        """The gateway holds `count` jobs now."""
        if count > self.peak:
            self.peak = count

    def release_soon(self) -> None:
        if self.peak < self.crowd:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.hold()
        self._timer = loop.call_later(self.idle_s, self._release)

    def hold(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        self._timer = None
        self.peak = 0
        trimmed = release()
        self.released += 1
        log.debug("memory handed back after the crowd", trimmed=trimmed)
