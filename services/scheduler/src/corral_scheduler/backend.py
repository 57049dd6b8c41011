"""The one client of the Ollama backend: streamed chat/generate and cheap status probes.

Generations are always requested with `stream: true`, whatever the client asked for, so tokens
can be forwarded as they come and a failure mid-way is seen as such; the gateway assembles
non-streaming answers exactly as Ollama does (concatenating the chunks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from corral_common.messages import JobKind
from corral_common.ollama import UNREACHABLE_ERRORS, call_json, status_error, unreachable

# Where each job kind goes. Loads and unloads are Ollama's own idiom: an empty generate
# request (with `keep_alive: 0` to unload).
KIND_PATHS: dict[str, str] = {
    "chat": "/api/chat",
    "generate": "/api/generate",
    "embed": "/api/embed",
    "embeddings": "/api/embeddings",
    "load": "/api/generate",
    "unload": "/api/generate",
}


# Far above any real chunk (a 1M-token `context` is about 7 MB), low enough that a broken
# backend cannot exhaust memory with one endless line.
MAX_LINE_BYTES = 64 << 20


class BackendStreamError(Exception):
    """The backend sent an `{"error": ...}` line after the response had started."""


class OllamaBackend:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )

    @asynccontextmanager
    async def generation(
        self, kind: JobKind, payload: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Open a generation; yields its chunks. Leaving the block closes the upstream response,
        which is what aborts a generation on the backend."""
        body = orjson.dumps({**payload, "stream": True})
        try:
            response = await self._session.post(
                f"{self.base_url}{KIND_PATHS[kind]}",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc) from exc
        try:
            if response.status != 200:
                raise await status_error(response)
            yield _chunks(response)
        finally:
            response.close()

    async def call(self, kind: JobKind, payload: dict[str, Any]) -> dict[str, Any]:
        """One request, one JSON answer (embeddings, loads, unloads). Cancelling the caller
        closes the upstream connection, as for a generation."""
        body = {**payload, "stream": False} if kind in ("load", "unload") else payload
        answer = await call_json(
            self._session,
            self.base_url,
            "POST",
            KIND_PATHS[kind],
            body,
            client_timeout=self._timeout,
        )
        return answer if isinstance(answer, dict) else {"value": answer}

    async def version(self) -> str:
        data = await self._get_json("/api/version", timeout_s=2.0)
        return str(data.get("version", "unknown"))

    async def loaded_models(self) -> list[str]:
        data = await self._get_json("/api/ps", timeout_s=2.0)
        return [str(m.get("model") or m.get("name")) for m in data.get("models") or []]

    async def _get_json(self, path: str, timeout_s: float) -> dict[str, Any]:
        try:
            async with self._session.get(
                f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                response.raise_for_status()
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise unreachable(self.base_url, exc) from exc
        return data if isinstance(data, dict) else {}


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in ndjson_lines(response.content):
            if not line.strip():
                continue
            chunk = orjson.loads(line)
            if "error" in chunk:
                raise BackendStreamError(str(chunk["error"]))
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise BackendStreamError(f"backend stream broke off: {exc or type(exc).__name__}") from exc


async def ndjson_lines(
    content: aiohttp.StreamReader, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[bytes]:
    """The stream's lines, read by chunks and split here.

    aiohttp's own line reading (`async for line in response.content`) stops at 128 KiB with
    LineTooLong, and Ollama's final /api/generate chunk carries the whole `context` array: a
    100k-token answer makes a line of about 700 KB, which failed the job after its whole
    generation had run. The bound here only stops a backend that never ends a line."""
    pending = bytearray()
    async for data in content.iter_any():
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            pending += data[start:end]
            yield bytes(pending)
            pending.clear()
            start = end + 1
        pending += data[start:]
        if len(pending) > max_line_bytes:
            raise BackendStreamError(
                f"backend sent a line over {max_line_bytes // (1 << 20)} MiB without an end"
            )
    if pending:
        yield bytes(pending)
