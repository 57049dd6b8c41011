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
    BackendKind,
    BackendStreamError,
    ChunkRun,
    DoneAnswer,
    EmbedAnswer,
    EmbeddingsAnswer,
    EmbedKind,
    Piece,
    RunningModel,
    ShowAnswer,
    StreamKind,
    TagEntry,
)
from corral_scheduler.backends.read_spells import ReadSpells

# Loads and unloads are Ollama's own idiom: an empty generate request (with `keep_alive: 0`
# to unload).
LOAD_PATH = "/api/generate"


# Far above any real chunk (a 1M-token `context` is about 7 MB), low enough that a broken
# backend cannot exhaust memory with one endless line.
MAX_LINE_BYTES = 64 << 20
# How much of a stream aiohttp buffers before it stops reading the socket. Its default (64 KiB)
# paused and resumed the transport every few hundred tokens of a fast stream.
READ_BUFFER_BYTES = 1 << 20
# How every non-final chunk of Ollama's (and the emulator's) ends: `done` is the last field of
# the top-level object. Preceded by a comma and followed by the line's end, this cannot be
# inside a string or a nested object, so a line that ends so is a chunk that is not final.
NOT_DONE_END = b',"done":false}'
_NOT_DONE_LINE_END = NOT_DONE_END + b"\n"


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
    ) -> AsyncIterator[AsyncIterator[Piece]]:
        """Open a generation; yields its chunks. Leaving the block closes the upstream response,
        which is what aborts a generation on the backend."""
        body = orjson.dumps({**payload, "stream": True})
        try:
            response = await self._session.post(
                f"{self.base_url}/api/{kind}",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                read_bufsize=READ_BUFFER_BYTES,
            )
        except UNREACHABLE_ERRORS as exc:
            raise unreachable(self.base_url, exc) from exc
        try:
            if response.status != 200:
                raise await status_error(response)
            yield _chunks(response)
        finally:
            response.close()

    # Each answer is Ollama's own, relayed unchecked (base.py): `_call` and `_models` hand back
    # the parsed JSON as `Any`, and the annotated name below is where it takes the shape Ollama
    # documents for the endpoint.

    async def embed(
        self, kind: EmbedKind, payload: dict[str, Any]
    ) -> EmbedAnswer | EmbeddingsAnswer:
        answer: EmbedAnswer | EmbeddingsAnswer = await self._call(f"/api/{kind}", payload)
        return answer

    async def load(self, payload: dict[str, Any]) -> DoneAnswer:
        answer: DoneAnswer = await self._call(LOAD_PATH, {**payload, "stream": False})
        return answer

    async def unload(self, payload: dict[str, Any]) -> DoneAnswer:
        answer: DoneAnswer = await self._call(LOAD_PATH, {**payload, "stream": False})
        return answer

    async def list_models(self) -> list[TagEntry]:
        models: list[TagEntry] = _models(await self._get_json("/api/tags", timeout_s=self._probe_s))
        return models

    async def running(self) -> list[RunningModel]:
        models: list[RunningModel] = _models(
            await self._get_json("/api/ps", timeout_s=self._probe_s)
        )
        return models

    async def show(self, model: str) -> ShowAnswer:
        answer: ShowAnswer = await self._call("/api/show", {"model": model})
        return answer

    async def version(self) -> str:
        data = await self._get_json("/api/version", timeout_s=self._probe_s)
        return str(data.get("version", "unknown"))

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        """One request, one JSON answer (an object; anything else as `{"value": ...}`).
        Cancelling the caller closes the upstream connection, as for a generation."""
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


def _models(data: dict[str, Any]) -> list[Any]:
    """The objects of a `{"models": [...]}` answer, otherwise as the server wrote them."""
    models = data.get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[Piece]:
    spells = ReadSpells(response)
    try:
        async for lines in ndjson_runs(response.content):
            run = _run_of(lines)
            if run is not None:
                spells.read(len(lines))
            rest: list[bytes] = []
            if run is None and len(lines) > 1:
                # Most often the read that ends the stream: its chunks, then the final one.
                run, rest = _run_of(lines[:-1]), lines[-1:]
            if run is None:
                rest = lines
            else:
                yield run
            for line in rest:
                if not line.strip():
                    continue
                chunk = orjson.loads(line)
                if "error" in chunk:
                    raise BackendStreamError(str(chunk["error"]))
                yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise BackendStreamError(f"backend stream broke off: {exc or type(exc).__name__}") from exc
    finally:
        spells.end()


def _run_of(lines: list[bytes]) -> ChunkRun | None:
    """The lines of one read as a run of non-final chunks, parsed in one call; None when any
    of them may be something else (the final chunk, an error, a blank line), or would not be
    relayed byte for byte as read (a `\\u` or `\\/` escape, which re-encoding the chunk
    spells out, as the gateway always did): those are read one by one."""
    if not lines:
        return None
    text = b"\n".join(lines)
    if (
        (text + b"\n").count(_NOT_DONE_LINE_END) != len(lines)
        or b'"error"' in text
        or b"\\u" in text
        or b"\\/" in text
    ):
        return None
    try:
        chunks = orjson.loads(b"[" + text.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(chunks) != len(lines) or set(map(type, chunks)) != {dict}:
        # Not one JSON object per line: read line by line, which fails on the bad one.
        return None
    return ChunkRun(chunks, lines)


async def ndjson_runs(
    content: aiohttp.StreamReader, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[list[bytes]]:
    """The stream's complete lines, as many as each read brings (never an empty list).

    aiohttp's own line reading (`async for line in response.content`) stops at 128 KiB with
    LineTooLong, and Ollama's final /api/generate chunk carries the whole `context` array: a
    100k-token answer makes a line of about 700 KB, which failed the job after its whole
    generation had run. The bound here only stops a backend that never ends a line."""
    pending = bytearray()
    async for data in content.iter_any():
        end = data.find(b"\n")
        if end == -1:
            pending += data
        else:
            lines: list[bytes] = []
            if pending:
                pending += data[:end]
                lines.append(bytes(pending))
                pending.clear()
                data = data[end + 1 :]
            parts = data.split(b"\n")
            pending += parts.pop()
            lines += parts
            if lines:
                yield lines
        if len(pending) > max_line_bytes:
            raise BackendStreamError(
                f"backend sent a line over {max_line_bytes // (1 << 20)} MiB without an end"
            )
    if pending:
        yield [bytes(pending)]


async def ndjson_lines(
    content: aiohttp.StreamReader, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[bytes]:
    """The stream's lines one by one (`ndjson_runs`)."""
    async for lines in ndjson_runs(content, max_line_bytes):
        for line in lines:
            yield line
