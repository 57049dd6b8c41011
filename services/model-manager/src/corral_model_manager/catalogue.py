"""Model metadata from the backend's read-only `/api/show`, cached per model.

Read-only calls may go to the backend directly (ARCHITECTURE.md section 1); nothing here changes
what the backend is doing, so nothing here needs the scheduler's serial lane. An
OpenAI-compatible backend (`CORRAL_BACKEND_KIND=openai`) has none of Ollama's read-only
endpoints: its `/v1/models` answers all three, in Ollama's shapes (corral_common.openai_models).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from corral_common.context_lengths import context_length_of
from corral_common.model_names import canonical_model_name
from corral_common.openai_models import BackendKind, ps_entries, show_answer, tags_entries
from corral_model_manager.backend import Backend


class ModelCatalogue:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        ttl_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        kind: BackendKind = "ollama",
        headers: dict[str, str] | None = None,
    ) -> None:
        server = "OpenAI-compatible" if kind == "openai" else "Ollama"
        self._backend = Backend(
            session, base_url, timeout_s=timeout_s, headers=headers, server=server
        )
        self.base_url = self._backend.base_url
        self.kind = kind
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def model_info(self, model: str) -> dict[str, Any]:
        """`{"model", "context_length", "details", "capabilities"}`; a model the backend does
        not know raises its own 404 (`model_not_found`)."""
        key = canonical_model_name(model)
        # One lookup per model at a time: a burst of requests for a cold model asks once.
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._cache.get(key)
            if cached is not None and cached[0] > self._clock():
                return {**cached[1], "model": model}
            info = await self._show(model)
            self._cache[key] = (self._clock() + self._ttl_s, info)
            return {**info, "model": model}

    def forget(self, model: str | None = None) -> None:
        """Drop cached answers (all, or one model's) after the backend's models changed."""
        if model is None:
            self._cache.clear()
        else:
            self._cache.pop(canonical_model_name(model), None)

    async def tags(self) -> Any:
        """The backend's `/api/tags`, as it answers it."""
        if self.kind == "openai":
            return {"models": tags_entries(await self.backend("GET", "/v1/models"))}
        return await self.backend("GET", "/api/tags")

    async def running(self) -> Any:
        """The backend's `/api/ps`, as it answers it."""
        if self.kind == "openai":
            return {"models": ps_entries(await self.backend("GET", "/v1/models"))}
        return await self.backend("GET", "/api/ps")

    async def show(self, request: dict[str, Any]) -> Any:
        """The backend's `/api/show` for a client's request, as it answers it."""
        if self.kind == "openai":
            model = request.get("model") or request.get("name") or ""
            return show_answer(await self.backend("GET", "/v1/models"), str(model))
        return await self.backend("POST", "/api/show", request)

    async def backend(self, method: str, path: str, body: Any = None) -> Any:
        """One read-only call; the backend's errors come back as its own status and text."""
        return await self._backend.call(method, path, body)

    async def _show(self, model: str) -> dict[str, Any]:
        show = await self.show({"model": model})
        return {
            "context_length": context_length_of(show),
            "details": show.get("details") or {},
            "capabilities": show.get("capabilities") or [],
        }
