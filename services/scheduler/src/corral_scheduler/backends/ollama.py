"""The Ollama backend: Ollama's own API, passed through (base.Backend's shapes are Ollama's).

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

from corral_common.ollama import UNREACHABLE_ERRORS, call_json, status_error, unreachable
from corral_scheduler.backends.base import (
    Answer,
    BackendKind,
    BackendStreamError,
    Chunk,
    EmbedKind,
    StreamKind,
)

# Loads and unloads are Ollama's own idiom: an empty generate request (with `keep_alive: 0`
# to unload).
LOAD_PATH = "/api/generate"


# Far above any real chunk (a 1M-token `context` is about 7 MB), low enough that a broken
# backend cannot exhaust memory with one endless line.
MAX_LINE_BYTES = 64 << 20


class OllamaBackend:
    kind: BackendKind = "ollama"

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
        # Status probes (version, model lists) are cheap: a backend slower than this is down.
        self._probe_s = 2.0

    @asynccontextmanager
    async def stream(
        self, kind: StreamKind, payload: dict[str, Any]
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Open a generation; yields its chunks. Leaving the block closes the upstream response,
        which is what aborts a generation on the backend."""
        body = orjson.dumps({**payload, "stream": True})
        try:
            response = await self._session.post(
                f"{self.base_url}/api/{kind}",
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

    async def embed(self, kind: EmbedKind, payload: dict[str, Any]) -> Answer:
        return await self._call(f"/api/{kind}", payload)

    async def load(self, payload: dict[str, Any]) -> Answer:
        return await self._call(LOAD_PATH, {**payload, "stream": False})

    async def unload(self, payload: dict[str, Any]) -> Answer:
        return await self._call(LOAD_PATH, {**payload, "stream": False})

    async def list_models(self) -> list[dict[str, Any]]:
        return _models(await self._get_json("/api/tags", timeout_s=self._probe_s))

    async def running(self) -> list[dict[str, Any]]:
        return _models(await self._get_json("/api/ps", timeout_s=self._probe_s))

    async def show(self, model: str) -> Answer:
        return await self._call("/api/show", {"model": model})

    async def version(self) -> str:
        data = await self._get_json("/api/version", timeout_s=self._probe_s)
        return str(data.get("version", "unknown"))

    async def _call(self, path: str, body: dict[str, Any]) -> Answer:
        """One request, one JSON answer. Cancelling the caller closes the upstream
        connection, as for a generation."""
        answer = await call_json(
            self._session, self.base_url, "POST", path, body, client_timeout=self._timeout
        )
        return answer if isinstance(answer, dict) else {"value": answer}

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


def _models(data: dict[str, Any]) -> list[dict[str, Any]]:
    models = data.get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
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
