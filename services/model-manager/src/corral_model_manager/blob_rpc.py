"""The blob RPC methods (`corral_common.blobs` is the contract): params validated with the
contract's models, answers built from them, so both ends read one declaration."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral_common.blobs import (
    BLOB_HEAD,
    BLOB_UPLOAD_ABORT,
    BLOB_UPLOAD_BEGIN,
    BLOB_UPLOAD_CHUNK,
    BLOB_UPLOAD_FINISH,
    MAX_BLOB_CHUNK_BYTES,
    BlobHeadParams,
    BlobHeadResult,
    BlobUploadBeginParams,
    BlobUploadBeginResult,
    BlobUploadChunkParams,
    BlobUploadChunkResult,
    BlobUploadFinishResult,
    BlobUploadParams,
    decode_chunk,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.rpc import Handler
from corral_model_manager.blob_uploads import BlobUploads

P = TypeVar("P", bound=BaseModel)


def _params(model: type[P], params: dict[str, Any]) -> P:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise CorralError(
            ErrorType.INVALID_REQUEST, f"invalid {model.__name__}: {exc.errors()[0]['msg']}"
        ) from None


def blob_methods(uploads: BlobUploads) -> dict[str, Handler]:
    async def head(params: dict[str, Any]) -> Any:
        parsed = _params(BlobHeadParams, params)
        return BlobHeadResult(exists=await uploads.exists(parsed.digest)).model_dump()

    async def begin(params: dict[str, Any]) -> Any:
        parsed = _params(BlobUploadBeginParams, params)
        upload_id, status = await uploads.begin(parsed.digest)
        return BlobUploadBeginResult(upload_id=upload_id, status=status).model_dump()

    async def chunk(params: dict[str, Any]) -> Any:
        parsed = _params(BlobUploadChunkParams, params)
        # base64 is 4/3 of the bytes: refuse an oversized chunk before decoding it.
        if len(parsed.data) > (MAX_BLOB_CHUNK_BYTES // 3 + 1) * 4:
            raise CorralError(
                ErrorType.INVALID_REQUEST,
                f"a blob chunk may carry at most {MAX_BLOB_CHUNK_BYTES} bytes",
                status=413,
            )
        try:
            data = decode_chunk(parsed.data)
        except ValueError as exc:
            raise CorralError(
                ErrorType.INVALID_REQUEST, f"blob chunk is not base64: {exc}"
            ) from None
        received = await uploads.chunk(parsed.upload_id, parsed.offset, data)
        return BlobUploadChunkResult(received=received).model_dump()

    async def finish(params: dict[str, Any]) -> Any:
        parsed = _params(BlobUploadParams, params)
        return BlobUploadFinishResult(status=await uploads.finish(parsed.upload_id)).model_dump()

    async def abort(params: dict[str, Any]) -> Any:
        uploads.abort(_params(BlobUploadParams, params).upload_id)
        return {}

    return {
        BLOB_HEAD: head,
        BLOB_UPLOAD_BEGIN: begin,
        BLOB_UPLOAD_CHUNK: chunk,
        BLOB_UPLOAD_FINISH: finish,
        BLOB_UPLOAD_ABORT: abort,
    }
