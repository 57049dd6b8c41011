"""BlobUploads in-process, against the emulator's blob endpoints through the real Backend: the
relay's order, backpressure, refusals, expiry and limits."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from corral_common.errors import CorralError
from corral_emulator import RunningEmulator, running_emulator
from corral_model_manager.backend import Backend
from corral_model_manager.blob_uploads import BlobUploads

DATA = b"GGUF" + bytes(range(256)) * 1000
WAIT_S = 10.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as running:
        yield running


@pytest.fixture
async def backend(emulator: RunningEmulator) -> AsyncIterator[Backend]:
    async with aiohttp.ClientSession() as session:
        yield Backend(session, emulator.url, timeout_s=WAIT_S)


def uploads_for(backend: Backend, *, idle_s: float = WAIT_S, max_uploads: int = 4) -> BlobUploads:
    return BlobUploads(backend.head, backend.upload, idle_s=idle_s, max_uploads=max_uploads)


async def send(uploads: BlobUploads, data: bytes, digest: str | None = None) -> int:
    upload_id, status = await uploads.begin(digest or digest_of(data))
    if upload_id is None:
        assert status is not None
        return status
    offset = 0
    for piece in pieces(data):
        offset = await uploads.chunk(upload_id, offset, piece)
    assert offset == len(data)
    return await uploads.finish(upload_id)


async def test_an_upload_reaches_the_backend_whole(
    backend: Backend, emulator: RunningEmulator
) -> None:
    uploads = uploads_for(backend)
    digest = digest_of(DATA)
    assert await uploads.exists(digest) is False
    assert await send(uploads, DATA) == 201
    assert await uploads.exists(digest) is True
    blob = emulator.state.blobs.get(digest)
    assert blob is not None and blob.size == len(DATA)
    # Present already: answered from the check, nothing sent.
    assert await uploads.begin(digest) == (None, 200)
    assert uploads.under_way == 0


async def test_a_digest_mismatch_is_the_backends_400(backend: Backend) -> None:
    uploads = uploads_for(backend)
    claimed = digest_of(b"other")
    with pytest.raises(CorralError) as refused:
        await send(uploads, DATA, claimed)
    assert refused.value.status == 400
    assert refused.value.message == (
        f'digest mismatch, expected "{claimed}", got "{digest_of(DATA)}"'
    )


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 64])
async def test_a_malformed_digest_is_400(backend: Backend, digest: str) -> None:
    uploads = uploads_for(backend)
    for call in (uploads.exists(digest), uploads.begin(digest)):
        with pytest.raises(CorralError) as refused:
            await call
        assert (refused.value.status, refused.value.message) == (400, "invalid digest format")


async def test_chunks_must_come_in_order(backend: Backend) -> None:
    uploads = uploads_for(backend)
    upload_id, _ = await uploads.begin(digest_of(DATA))
    assert upload_id is not None
    first, second, *_ = pieces(DATA)
    await uploads.chunk(upload_id, 0, first)
    with pytest.raises(CorralError) as refused:
        await uploads.chunk(upload_id, 0, second)
    assert refused.value.status == 409
    uploads.abort(upload_id)
    with pytest.raises(CorralError) as gone:
        await uploads.chunk(upload_id, len(first), second)
    assert gone.value.status == 404
    await uploads.close()


async def test_an_abandoned_upload_expires_and_the_backend_keeps_nothing(
    backend: Backend, emulator: RunningEmulator
) -> None:
    uploads = uploads_for(backend, idle_s=0.2)
    digest = digest_of(DATA)
    upload_id, _ = await uploads.begin(digest)
    assert upload_id is not None
    await uploads.chunk(upload_id, 0, DATA[:1000])
    # Nobody sends more: the idle limit cancels the backend request.
    upload = uploads._uploads[upload_id]
    assert upload.task is not None
    await asyncio.wait_for(asyncio.gather(upload.task, return_exceptions=True), WAIT_S)
    assert uploads.under_way == 0
    with pytest.raises(CorralError) as expired:
        await uploads.chunk(upload_id, 1000, DATA[1000:2000])
    assert expired.value.status == 408
    assert emulator.state.blobs.get(digest) is None


async def test_too_many_uploads_at_once_are_refused_with_503(backend: Backend) -> None:
    uploads = uploads_for(backend, max_uploads=1)
    first, _ = await uploads.begin(digest_of(DATA))
    with pytest.raises(CorralError) as busy:
        await uploads.begin(digest_of(b"second"))
    assert busy.value.status == 503
    assert busy.value.headers == {"Retry-After": "5"}
    assert first is not None
    uploads.abort(first)
    second, _ = await uploads.begin(digest_of(b"second"))
    assert second is not None
    await uploads.close()


async def test_an_absent_backend_is_503() -> None:
    async with aiohttp.ClientSession() as session:
        backend = Backend(session, "http://127.0.0.1:9", timeout_s=WAIT_S)
        with pytest.raises(CorralError) as down:
            await uploads_for(backend).begin(digest_of(DATA))
    assert down.value.status == 503
