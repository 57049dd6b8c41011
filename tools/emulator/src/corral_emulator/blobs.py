"""Uploaded blobs (`POST /api/blobs/:digest`), the way `ollama create` sends a GGUF first.

Ollama keeps blobs as files named `sha256-<hex>`; the emulator keeps, per digest, the size and
the first bytes (enough to sniff the GGUF magic, as Ollama's create does), never the whole
upload, so a large test upload costs no memory. A layer of a model the emulator holds counts as
a blob too, as its file would in Ollama's blob directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIGEST_PATTERN = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
"""`manifest.BlobsPath`: only real sha256 digests, with either separator."""
INVALID_DIGEST_FORMAT = "invalid digest format"
GGUF_MAGIC = b"GGUF"
HEAD_BYTES = 512
"""Ollama's create reads a section of 512 bytes to detect the content type."""


@dataclass(frozen=True, slots=True)
class Blob:
    size: int
    head: bytes


def valid_digest(digest: str) -> bool:
    return DIGEST_PATTERN.match(digest) is not None


def blob_key(digest: str) -> str:
    """The file name Ollama would use: `sha256:x` and `sha256-x` are the same blob."""
    return digest.replace(":", "-", 1)


def layer_digest(digest: str) -> str:
    """The `sha256:<hex>` form manifests and layers use."""
    return digest.replace("-", ":", 1)


class BlobStore:
    def __init__(self) -> None:
        self._blobs: dict[str, Blob] = {}

    def get(self, digest: str) -> Blob | None:
        return self._blobs.get(blob_key(digest))

    def put(self, digest: str, blob: Blob) -> None:
        self._blobs[blob_key(digest)] = blob

    def clear(self) -> None:
        self._blobs.clear()

    def __len__(self) -> int:
        return len(self._blobs)
