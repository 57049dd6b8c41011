"""The blob RPC methods, by their declarations in `corral_common.contracts.model_manager`
(how a blob travels: `corral_common.blobs`): params arrive parsed, answers are the declared
results, so both ends read one declaration."""

from __future__ import annotations

from corral_common.blobs import MAX_BLOB_CHUNK_BYTES, decode_chunk
from corral_common.contracts import Empty
from corral_common.contracts.model_manager import (
    MODEL_MANAGER,
    BlobHeadParams,
    BlobHeadResult,
    BlobUploadBeginParams,
    BlobUploadBeginResult,
    BlobUploadChunkParams,
    BlobUploadChunkResult,
    BlobUploadFinishResult,
    BlobUploadParams,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import Handler, MethodTable
from corral_model_manager.blob_uploads import BlobUploads
from corral_model_manager.servers import ModelServers


def blob_methods(uploads: BlobUploads, servers: ModelServers) -> dict[str, Handler]:
    table = MethodTable(MODEL_MANAGER.service)

    def managed() -> None:
        """Blobs are for Ollama's create; a backend of no other kind answers 501 naming it."""
        servers.managed("blob upload")

    @table.serves(MODEL_MANAGER.blob_head)
    async def head(p: BlobHeadParams) -> BlobHeadResult:
        managed()
        return BlobHeadResult(exists=await uploads.exists(p.digest))

    @table.serves(MODEL_MANAGER.blob_upload_begin)
    async def begin(p: BlobUploadBeginParams) -> BlobUploadBeginResult:
        managed()
        upload_id, status = await uploads.begin(p.digest)
        return BlobUploadBeginResult(upload_id=upload_id, status=status)

    @table.serves(MODEL_MANAGER.blob_upload_chunk)
    async def chunk(p: BlobUploadChunkParams) -> BlobUploadChunkResult:
        # base64 is 4/3 of the bytes: refuse an oversized chunk before decoding it.
        if len(p.data) > (MAX_BLOB_CHUNK_BYTES // 3 + 1) * 4:
            raise CorralError(
                ErrorType.INVALID_REQUEST,
                f"a blob chunk may carry at most {MAX_BLOB_CHUNK_BYTES} bytes",
                status=413,
            )
        try:
            data = decode_chunk(p.data)
        except ValueError as exc:
            raise CorralError(
                ErrorType.INVALID_REQUEST, f"blob chunk is not base64: {exc}"
            ) from None
        return BlobUploadChunkResult(received=await uploads.chunk(p.upload_id, p.offset, data))

    @table.serves(MODEL_MANAGER.blob_upload_finish)
    async def finish(p: BlobUploadParams) -> BlobUploadFinishResult:
        return BlobUploadFinishResult(status=await uploads.finish(p.upload_id))

    @table.serves(MODEL_MANAGER.blob_upload_abort)
    async def abort(p: BlobUploadParams) -> Empty:
        uploads.abort(p.upload_id)
        return Empty()

    return table.handlers
