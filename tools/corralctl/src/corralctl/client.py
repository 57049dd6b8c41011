"""The gateway as corralctl calls it: JSON requests with the operator's key, the server's own
error text on a refusal, and NDJSON streams (a pull's progress) read line by line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

# The longest error text repeated from a body that is not JSON (an HTML proxy page, say).
MAX_SHOWN_TEXT = 300


def segment(value: str) -> str:
    """An id as one path segment (quoted: it cannot reach another route)."""
    return quote(value, safe="")


class ApiError(Exception):
    """The gateway answered with an error status; `message` is its own text."""

    def __init__(
        self, status: int, message: str, error_type: str | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.body = body

    def __str__(self) -> str:
        kind = f" {self.error_type}" if self.error_type else ""
        if self.status < 400:
            # A stream that failed after its 200: only its error line says what happened.
            return self.message
        return f"{self.status}{kind}: {self.message}{_hint(self.status)}"


class Unreachable(Exception):
    """No answer from the gateway at all (refused, unknown host, timed out)."""


def _hint(status: int) -> str:
    if status == 401:
        return " (give an API key: --key or CORRAL_API_KEY)"
    if status == 403:
        return " (this needs an admin key)"
    return ""


def error_of(status: int, raw: bytes) -> ApiError:
    """An error answer in any of the gateway's shapes: Corral's `{"error": {"type",
    "message"}}`, Ollama's and the stream's `{"error": "text"}`, or plain text."""
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        text = raw.decode(errors="replace").strip()
        return ApiError(status, text[:MAX_SHOWN_TEXT] or "(no message)")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("message")), error.get("type") or None, body)
    if isinstance(error, str):
        return ApiError(status, error, None, body)
    return ApiError(status, json.dumps(body)[:MAX_SHOWN_TEXT], None, body)


class Gateway:
    """One gateway, called with the operator's key (`Authorization: Bearer`, what every
    surface accepts). `timeout_s` bounds each request; streams wait as long as they flow."""

    def __init__(self, url: str, key: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A stream has no total bound: only a silence longer than timeout_s ends it.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the Gateway as an async context manager")
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        accept: tuple[int, ...] = (),
    ) -> Any:
        """The answer's JSON (None when empty). An error status raises ApiError, unless it is
        one of `accept` (a 503 /health still describes the cluster)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            async with self.session.request(
                method,
                self.url + path,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                raw = await response.read()
                if response.status >= 400 and response.status not in accept:
                    raise error_of(response.status, raw)
                return _json(raw, response.status)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    async def lines(self, method: str, path: str, body: Any) -> AsyncIterator[dict[str, Any]]:
        """The objects of an NDJSON answer as they arrive. An `{"error"}` line ends it with
        ApiError (a stream's failures come after its 200)."""
        try:
            async with self.session.request(
                method, self.url + path, json=body, timeout=self._stream_timeout
            ) as response:
                if response.status >= 400:
                    raise error_of(response.status, await response.read())
                async for raw in response.content:
                    if not raw.strip():
                        continue
                    line = _json(raw, response.status)
                    if not isinstance(line, dict):
                        raise ApiError(response.status, f"unexpected line {raw[:80]!r}")
                    if "error" in line:
                        raise error_of(response.status, raw)
                    yield line
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> Unreachable:
        if isinstance(exc, TimeoutError):
            return Unreachable(f"no answer from {self.url} in time")
        return Unreachable(f"cannot reach {self.url}: {exc}")


def _json(raw: bytes, status: int) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(status, f"the answer is not JSON: {raw[:80]!r}") from None
