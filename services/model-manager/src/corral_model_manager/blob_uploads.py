"""Blob uploads relayed to the backend: the model manager's side of `POST /api/blobs/:digest`.

The gateway sends a blob as a sequence of RPC calls (`corral_common.blobs` explains why and
how); here each upload is one streaming `POST /api/blobs/<digest>` to the backend, fed from a
one-chunk queue. A chunk call returns once its bytes are queued behind at most one other, so
the caller can never run ahead of the backend by more than two chunks, and nothing is written
to disk here: Ollama stores the blob and checks its digest, and its answer is the client's.

An upload nobody feeds for `idle_s` is cancelled (the backend then drops the partial file);
one whose backend request ended early (refused, or the backend went away) answers every later
call of it with that error until it is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from corral_common.blobs import INVALID_DIGEST_FORMAT, valid_digest
from corral_common.errors import CorralError, ErrorType
from corral_common.ids import new_id
from corral_common.timeouts import within
from corral_model_manager import metrics

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Upload:
    upload_id: str
    digest: str
    idle_s: float
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    received: int = 0
    task: asyncio.Task[int] | None = None
    ended_at: float | None = None
    """When the backend request ended (answered, failed or was cancelled)."""
    expired: bool = False

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await within(self.queue.get(), self.idle_s)
            except TimeoutError:
                # The gateway stopped calling (its client left, or it died): cancelling the
                # request closes the connection, and Ollama discards what it received.
                self.expired = True
                log.info("blob upload abandoned", digest=self.digest, received=self.received)
                if self.task is not None:
                    self.task.cancel()
                return
            if chunk is None:
                return
            yield chunk


def _digest_error() -> CorralError:
    return CorralError(ErrorType.INVALID_REQUEST, INVALID_DIGEST_FORMAT, status=400)


def _blob_path(digest: str) -> str:
    return f"/api/blobs/{digest}"


class BlobUploads:
    def __init__(
        self,
        head: Callable[[str], Awaitable[int]],
        upload: Callable[[str, AsyncIterator[bytes]], Coroutine[Any, Any, int]],
        *,
        idle_s: float,
        max_uploads: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._head = head
        self._upload = upload
        self._idle_s = idle_s
        self._max_uploads = max_uploads
        self._monotonic = monotonic
        self._uploads: dict[str, _Upload] = {}

    async def exists(self, digest: str) -> bool:
        """`HEAD /api/blobs/:digest` on the backend: present, absent, or its refusal."""
        if not valid_digest(digest):
            raise _digest_error()
        status = await self._head(_blob_path(digest))
        if status == 200:
            return True
        if status == 404:
            return False
        if status == 400:
            raise _digest_error()
        raise CorralError(
            ErrorType.BACKEND_ERROR, f"the backend answered {status} to a blob check", status=502
        )

    async def begin(self, digest: str) -> tuple[str | None, int | None]:
        """(upload id, None), or (None, 200) when the backend already has the blob."""
        if await self.exists(digest):
            metrics.BLOB_UPLOADS.labels("present").inc()
            return None, 200
        self._sweep()
        live = sum(1 for upload in self._uploads.values() if upload.ended_at is None)
        if live >= self._max_uploads:
            raise CorralError(
                ErrorType.MODEL_BUSY,
                f"{live} blob uploads are under way; try again when one has finished",
                status=503,
                headers={"Retry-After": "5"},
            )
        upload = _Upload(new_id(), digest, self._idle_s)
        upload.task = asyncio.create_task(
            self._upload(_blob_path(digest), upload.body()), name=f"blob-upload-{digest[:19]}"
        )
        upload.task.add_done_callback(lambda task: self._ended(upload, task))
        self._uploads[upload.upload_id] = upload
        return upload.upload_id, None

    async def chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        """Hand `data` (at `offset`) to the backend's upload; the bytes received so far."""
        upload = self._find(upload_id)
        # RPC handlers run concurrently; a caller's chunks must still go out in order, whole.
        async with upload.lock:
            if offset != upload.received:
                raise CorralError(
                    ErrorType.INVALID_REQUEST,
                    f"chunk at offset {offset}, but {upload.received} bytes were received",
                    status=409,
                )
            await self._hand_over(upload, data)
            upload.received += len(data)
            metrics.BLOB_BYTES.inc(len(data))
            return upload.received

    async def finish(self, upload_id: str) -> int:
        """End the body and return the backend's answer (201, or 200), or raise its refusal."""
        upload = self._find(upload_id)
        async with upload.lock:
            await self._hand_over(upload, None)
            try:
                status = await self._outcome(upload)
            except CorralError as exc:
                metrics.BLOB_UPLOADS.labels("refused" if exc.status < 500 else "failed").inc()
                raise
            finally:
                self._uploads.pop(upload_id, None)
            metrics.BLOB_UPLOADS.labels("created" if status == 201 else "present").inc()
            return status

    def abort(self, upload_id: str) -> None:
        upload = self._uploads.pop(upload_id, None)
        if upload is not None and upload.task is not None:
            upload.task.cancel()

    async def close(self) -> None:
        tasks = [u.task for u in self._uploads.values() if u.task is not None]
        self._uploads.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def under_way(self) -> int:
        return sum(1 for upload in self._uploads.values() if upload.ended_at is None)

    # -- internals ---------------------------------------------------------------------------

    def _find(self, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise CorralError(
                ErrorType.REQUEST_NOT_FOUND,
                f"blob upload {upload_id!r} is unknown (finished, aborted or expired)",
                status=404,
            )
        return upload

    async def _hand_over(self, upload: _Upload, item: bytes | None) -> None:
        """Queue `item` for the backend request, or raise how that request ended."""
        assert upload.task is not None
        if upload.task.done():
            await self._outcome(upload)
            # Answered before the body ended (Ollama had the blob after all): nothing to send.
            return
        put = asyncio.ensure_future(upload.queue.put(item))
        await asyncio.wait({put, upload.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await put
            await self._outcome(upload)

    async def _outcome(self, upload: _Upload) -> int:
        """The ended request's status, or its failure as the caller should see it."""
        assert upload.task is not None
        if upload.expired:
            raise CorralError(
                ErrorType.QUEUE_TIMEOUT,
                f"blob upload expired: no data for {self._idle_s:g} s",
                status=408,
            )
        try:
            return await asyncio.shield(upload.task)
        except asyncio.CancelledError:
            if not upload.task.cancelled():
                raise
            raise CorralError(
                ErrorType.INTERRUPTED, "the blob upload was cancelled", status=503
            ) from None

    def _ended(self, upload: _Upload, task: asyncio.Task[int]) -> None:
        upload.ended_at = self._monotonic()
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here, so an upload nobody finishes logs no "never retrieved" warning.
            log.info("blob upload failed", digest=upload.digest, error=str(task.exception()))

    def _sweep(self) -> None:
        """Forget uploads that ended more than `idle_s` ago and were never finished."""
        now = self._monotonic()
        for upload_id, upload in list(self._uploads.items()):
            if upload.ended_at is not None and now - upload.ended_at > self._idle_s:
                del self._uploads[upload_id]
