"""HEAD and POST /api/blobs/:digest (Ollama's HeadBlobHandler and CreateBlobHandler)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from corral_emulator.blobs import (
    HEAD_BYTES,
    INVALID_DIGEST_FORMAT,
    Blob,
    layer_digest,
    valid_digest,
)
from corral_emulator.state import STATE_KEY, EmulatorState
from corral_emulator.wire import error_response, go_quote

READ_CHUNK = 1 << 20


def has_blob(state: EmulatorState, digest: str) -> bool:
    """Uploaded, or a layer of a model the emulator holds (Ollama's blob directory has both)."""
    return state.blobs.get(digest) is not None or state.catalogue.has_blob(layer_digest(digest))


async def head_blob(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    digest = request.match_info["digest"]
    if not valid_digest(digest):
        return error_response(400, INVALID_DIGEST_FORMAT)
    if not has_blob(state, digest):
        # aiohttp drops the body of a HEAD answer, as Go's net/http does.
        return error_response(404, f"blob {go_quote(digest)} not found")
    return web.Response(status=200)


async def create_blob(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    digest = request.match_info["digest"]
    if not valid_digest(digest):
        return error_response(400, INVALID_DIGEST_FORMAT)
    if has_blob(state, digest):
        # Already there: Ollama answers 200 without reading the body.
        return web.Response(status=200)
    sha256 = hashlib.sha256()
    head = bytearray()
    size = 0
    # Streamed, not request.read(): a GGUF is far beyond the app's body limit.
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        sha256.update(chunk)
        size += len(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
    got = f"sha256:{sha256.hexdigest()}"
    # Compared with the digest exactly as given: a `sha256-` or upper-case digest never
    # matches what NewLayer computes, in Ollama too.
    if got != digest:
        return error_response(
            400, f"digest mismatch, expected {go_quote(digest)}, got {go_quote(got)}"
        )
    state.blobs.put(digest, Blob(size=size, head=bytes(head)))
    state.changes.notify()
    return web.Response(status=201)
