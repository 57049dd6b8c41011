"""A model's context length, from the model-manager service (`model_info` over RPC), cached.

The model-manager may not be running (or may not exist yet): a lookup that gets no answer
within a short timeout counts as "unknown", is remembered for a while so requests do not each
wait for it, and the caller falls back to its default window (the session store when it
assembles a context, the gateway when it sizes a stateless prompt).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from corral_common.errors import CorralError
from corral_common.timeouts import within

log = structlog.get_logger(__name__)


class ContextLengths(Protocol):
    async def context_length(self, model: str) -> int | None:
        """The model's context length in tokens, or None when unknown."""
        ...


def context_length_of(show: Mapping[str, Any]) -> int | None:
    """A model's context length from its `/api/show` answer: `model_info`'s
    `<general.architecture>.context_length` (else any `*.context_length`), None when absent."""
    info = show.get("model_info")
    if not isinstance(info, dict):
        return None
    architecture = info.get("general.architecture")
    candidates = [f"{architecture}.context_length"] if isinstance(architecture, str) else []
    candidates += [key for key in info if key.endswith(".context_length")]
    for key in candidates:
        value = info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class StaticContextLengths:
    """Fixed answers (tests, or a deployment that wants to pin them)."""

    def __init__(self, lengths: Mapping[str, int] | None = None) -> None:
        self.lengths = dict(lengths or {})

    async def context_length(self, model: str) -> int | None:
        return self.lengths.get(model)


Fetch = Callable[[str], Awaitable[object]]
"""A model's context length as the model manager gives it (anything but a positive int is
taken for unknown)."""


class CachedContextLengths:
    """Answers from `fetch(model)` (the model's context length), cached for `ttl_s`;
    failures and timeouts cached as unknown for `failure_ttl_s`. Concurrent lookups of one
    model share one call."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        timeout_s: float,
        ttl_s: float,
        failure_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, int | None]] = {}
        self._inflight: dict[str, asyncio.Future[int | None]] = {}

    async def context_length(self, model: str) -> int | None:
        cached = self._cache.get(model)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        inflight = self._inflight.get(model)
        if inflight is not None:
            return await asyncio.shield(inflight)
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._inflight[model] = future
        try:
            value = await self._lookup(model)
            ttl = self.ttl_s if value is not None else self.failure_ttl_s
            self._cache[model] = (self._clock() + ttl, value)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody else may be waiting on it; do not let asyncio report it as unretrieved.
            future.exception()
            raise
        finally:
            self._inflight.pop(model, None)

    async def _lookup(self, model: str) -> int | None:
        try:
            value = await within(self._fetch(model), self.timeout_s)
        except (TimeoutError, CorralError) as exc:
            log.info("model context length unknown", model=model, reason=str(exc) or "timeout")
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        return None
