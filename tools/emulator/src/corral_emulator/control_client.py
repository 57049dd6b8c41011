"""A small async client for the `/_emulator/*` control API, for tests that run the emulator
as a separate process (or just prefer HTTP over reaching into app state)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
import orjson

from corral_emulator.failures import FailureMode


class EmulatorControl:
    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self._base = base_url.rstrip("/") + "/_emulator"
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> EmulatorControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "stats")

    async def reset(self) -> dict[str, Any]:
        return await self._call("POST", "reset")

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """token_delay_ms, load_ms, prompt_ms_per_token, default_keep_alive_s, pull_step_ms,
        pull_steps, models, registry (model specs as `{"name", "context_length", ...}`)."""
        return await self._call("POST", "config", changes)

    async def config(self) -> dict[str, Any]:
        return await self._call("GET", "config")

    async def wait_for_pull(
        self, count: int = 1, *, held: bool = False, within_s: float = 10.0
    ) -> dict[str, Any]:
        """Wait until `count` pulls are running (with `held`: waiting at the hold gate, so
        they stay running until `release()`)."""
        if held:
            return await self.wait(within_s, pulls_held=count)
        return await self.wait(within_s, pulling=count)

    async def fail(
        self,
        mode: FailureMode | str,
        count: int = 1,
        *,
        after_tokens: int = 1,
        message: str | None = None,
        status: int | None = None,
        model: str | None = None,
        endpoint: str | None = None,
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"mode": str(mode), "count": count, "after_tokens": after_tokens}
        optional = {"message": message, "status": status, "model": model, "endpoint": endpoint}
        body.update({key: value for key, value in optional.items() if value is not None})
        answer = await self._call("POST", "fail", body)
        pending: list[dict[str, Any]] = answer["pending_failures"]
        return pending

    async def clear_failures(self) -> None:
        await self._call("DELETE", "fail")

    async def requests(self, endpoint: str) -> list[Any]:
        answer = await self._call("GET", "requests", params={"endpoint": endpoint})
        bodies: list[Any] = answer["requests"]
        return bodies

    async def timeline(self, *, settled_within_s: float | None = 10.0) -> list[dict[str, Any]]:
        """The generation requests' timeline (`/_emulator/timeline`), oldest first: `start_ns`
        and `end_ns` (monotonic), `start_wall_ns` and `end_wall_ns` (epoch), `outcome`,
        `tokens`, `endpoint`, `model`. First waits up to `settled_within_s` for every started
        request to have its end stamped (None: read at once). `timeline.idle_gaps_ns` turns it
        into the backend's idle gaps."""
        if settled_within_s is not None:
            await self.wait(settled_within_s, timeline_open="eq:0")
        answer = await self._call("GET", "timeline")
        entries: list[dict[str, Any]] = answer["requests"]
        return entries

    async def hold(self) -> None:
        await self._call("POST", "hold")

    async def release(self) -> None:
        await self._call("POST", "release")

    async def wait(self, within_s: float = 10.0, **conditions: int | str) -> dict[str, Any]:
        """E.g. `wait(active=2)` or `wait(active="eq:0", completed=3)`.

        The emulator waits server-side; TimeoutError if the stats are not met within `within_s`.
        """
        params = {name: str(value) for name, value in conditions.items()}
        params["timeout"] = str(within_s)
        session = self._ensure_session()
        async with session.get(f"{self._base}/wait", params=params) as response:
            answer: dict[str, Any] = orjson.loads(await response.read())
            if response.status == 408:
                raise TimeoutError(f"emulator stats never met {conditions}: {answer['stats']}")
            response.raise_for_status()
            return answer

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        session = self._ensure_session()
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with session.request(
            method, f"{self._base}/{path}", data=data, params=params, headers=headers
        ) as response:
            payload = await response.read()
            if response.status >= 400:
                raise RuntimeError(f"emulator {method} {path}: {response.status} {payload!r}")
            answer: dict[str, Any] = orjson.loads(payload)
            return answer

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session
