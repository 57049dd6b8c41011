"""HTTP calls to the backend, and how their failures become Corral errors.

The backend's own refusals (a 404 `model 'x' not found`, a 400 `name "x" is invalid`) pass
through with its status and text, because clients match on them; a backend that is down or
silent is `corral_common.ollama.unreachable` (503 or 504).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

import aiohttp
import orjson

from corral_common.errors import CorralError, ErrorType
from corral_common.ollama import UNREACHABLE_ERRORS, call_json, status_error, unreachable


class Backend:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout_s: float,
        stall_timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
        server: str = "Ollama",
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        # Sent with every call (an OpenAI-compatible server's API key).
        self._headers = headers or {}
        # How errors name the server (`corral_common.ollama.unreachable`).
        self._server = server
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Streams have no total bound (a pull takes as long as the download); only silence
        # between two lines, and a slow connect, fail them.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeout_s,
            sock_read=stall_timeout_s if stall_timeout_s is not None else timeout_s,
        )

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request, one JSON answer (`{}` for Ollama's empty 200s)."""
        return await call_json(
            self._session,
            self.base_url,
            method,
            path,
            body,
            client_timeout=self._timeout,
            headers=self._headers,
            server=self._server,
        )

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any]]:
        """POST with `stream: true` and yield each NDJSON line as the backend wrote it,
        `{"error": ...}` lines included (what they mean is the caller's business)."""
        try:
            async with self._session.post(
                f"{self.base_url}{path}",
                data=orjson.dumps({**body, "stream": True}),
                headers={"Content-Type": "application/json"},
                timeout=self._stream_timeout,
            ) as response:
                if response.status != 200:
                    raise await status_error(response)
                async for raw in response.content:
                    if not raw.strip():
                        continue
                    try:
                        line = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        raise CorralError(
                            ErrorType.BACKEND_ERROR, f"backend sent an unreadable line on {path}"
                        ) from exc
                    yield line if isinstance(line, dict) else {"status": str(line)}
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc) from exc

    async def head(self, path: str) -> int:
        """A HEAD request's status (Ollama's blob check answers only with one)."""
        try:
            async with self._session.head(f"{self.base_url}{path}", timeout=self._timeout) as r:
                return r.status
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc) from exc

    async def upload(self, path: str, body: AsyncIterable[bytes]) -> int:
        """POST a body as it is produced (chunked), and return the backend's 2xx status; a
        refusal (Ollama's 400 `digest mismatch`) is raised with its own status and text."""
        try:
            async with self._session.post(
                f"{self.base_url}{path}",
                data=body,
                # What the Python client sends; Ollama reads the bytes whatever the type says.
                headers={"Content-Type": "application/octet-stream"},
                timeout=self._stream_timeout,
            ) as response:
                if response.status >= 300:
                    raise await status_error(response)
                await response.read()
                return response.status
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc) from exc
