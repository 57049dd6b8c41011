"""`HEAD /api/blobs/:digest` and `POST /api/blobs/:digest` (how `ollama create` uploads a GGUF),
relayed through the model manager: the gateway talks only to RabbitMQ.

A blob is gigabytes, more than any broker message may hold, so the body is read in
`BLOB_CHUNK_BYTES` pieces and each goes as one `blob_upload_chunk` call, the next only once the
model manager has handed the previous one to the backend's upload: the backend paces the
client, and the gateway holds one piece at a time. How a blob travels: `corral_common.blobs`;
the methods: `corral_common.contracts.model_manager`.
Answers are Ollama's: 201 (created) or 200 (already there) with no body, 404 for a HEAD of a
missing blob, 400 `invalid digest format` or `digest mismatch, expected "...", got "..."`.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import StreamReader, web

from corral_common.blobs import BLOB_CHUNK_BYTES, encode_chunk
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    BlobHeadParams,
    BlobUploadBeginParams,
    BlobUploadChunkParams,
    BlobUploadParams,
)
from corral_gateway.state import GATEWAY
from corral_gateway.validation import OllamaRequestError


async def head_blob(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    answer = await request.app[GATEWAY].rpc.call(
        MODEL_MANAGER.blob_head, BlobHeadParams(digest=digest)
    )
    if not answer.exists:
        # HeadBlobHandler's text; a HEAD answer carries no body anyway.
        raise OllamaRequestError(404, f'blob "{digest}" not found')
    return web.Response(status=200)


async def create_blob(request: web.Request) -> web.Response:
    rpc = request.app[GATEWAY].rpc
    digest = request.match_info["digest"]
    begun = await rpc.call(MODEL_MANAGER.blob_upload_begin, BlobUploadBeginParams(digest=digest))
    if begun.upload_id is None:
        # The backend has it: Ollama answers 200 without reading the body.
        return web.Response(status=begun.status or 200)
    upload_id = begun.upload_id
    ended = False
    try:
        offset = 0
        while piece := await _read_piece(request.content, BLOB_CHUNK_BYTES):
            await rpc.call(
                MODEL_MANAGER.blob_upload_chunk,
                BlobUploadChunkParams(upload_id=upload_id, offset=offset, data=encode_chunk(piece)),
            )
            offset += len(piece)
        ended = True
        finished = await rpc.call(
            MODEL_MANAGER.blob_upload_finish, BlobUploadParams(upload_id=upload_id)
        )
        return web.Response(status=finished.status)
    finally:
        if not ended:
            # The client left or a chunk failed: free the backend's upload now rather than
            # after the model manager's idle limit. Shielded: this request may be cancelled.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    rpc.call(MODEL_MANAGER.blob_upload_abort, BlobUploadParams(upload_id=upload_id))
                )


async def _read_piece(stream: StreamReader, size: int) -> bytes:
    """Up to `size` bytes of the body; fewer only at its end (b"" once it is over)."""
    piece = bytearray()
    while len(piece) < size:
        data = await stream.read(size - len(piece))
        if not data:
            break
        piece += data
    return bytes(piece)
