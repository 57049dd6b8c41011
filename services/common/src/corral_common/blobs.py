"""How blobs are uploaded and models pushed through the model manager (RPC service
`model-manager`); the methods are declared with the others in
`corral_common.contracts.model_manager` (`MODEL_MANAGER.blob_head`, `.blob_upload_*`, `.push`).

Why chunks over RPC: the gateway talks only to RabbitMQ (ARCHITECTURE.md section 1), and a
blob (a GGUF of gigabytes) cannot be one message: RabbitMQ 4.x refuses messages over 16 MiB
by default (`max_message_size`; 3.10's default is 128 MiB). So the gateway reads the client's
body in `BLOB_CHUNK_BYTES` pieces and sends each as one `blob_upload_chunk` call, base64 in the
JSON body (about 1.4 MB a message), waiting for each answer before the next: the answer comes
once the model manager has handed the bytes on to the backend's upload, so a slow backend
slows the client (backpressure) and nothing piles up in the broker or in memory. The model
manager streams the upload to Ollama's `POST /api/blobs/:digest` as one request, and Ollama
checks the digest, so the client gets Ollama's own answer (201, 200, or 400 `digest mismatch`).

Calls, in order (each a `corral.rpc` call to `model-manager`):
1. `blob_upload_begin {digest}` -> `{upload_id, status}`. `status` 200 means the backend already
   has the blob (answer 200 and send nothing: Ollama does not read the body then); otherwise
   `upload_id` names the upload. A malformed digest raises 400 `invalid digest format`.
2. `blob_upload_chunk {upload_id, offset, data}` per piece, `offset` = bytes sent before it,
   `data` base64. Answers `{received}` (bytes so far). A wrong offset is 409, an unknown or
   expired upload 404, a backend that refused or failed the upload its own status and text.
3. `blob_upload_finish {upload_id}` -> `{status}`: 201 (created) or 200, or the backend's
   refusal raised (400 `digest mismatch, expected "...", got "..."`).
   `blob_upload_abort {upload_id}` (the client went away) drops it; an upload without a call
   for `blob_upload_idle_s` is dropped too, and the backend discards the partial blob.
`blob_head {digest}` -> `{exists}` answers `HEAD /api/blobs/:digest` (200 / 404; 400 for a
malformed digest). `push {model, insecure, request_id, gateway_id}` -> `{model, joined}`
works exactly like `pull`: status lines follow as `progress` events, then `final` or `error`.
"""

from __future__ import annotations

import base64
import binascii
import re

BLOB_CHUNK_BYTES = 1 << 20
"""What the gateway sends per call: far under any broker's message limit once base64'd."""
MAX_BLOB_CHUNK_BYTES = 8 << 20
"""What the model manager accepts per call (a larger one is refused with 413)."""

DIGEST_PATTERN = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
"""Ollama's `manifest.BlobsPath` check: only sha256 digests, with `:` or `-`."""
INVALID_DIGEST_FORMAT = "invalid digest format"


def valid_digest(digest: str) -> bool:
    return DIGEST_PATTERN.match(digest) is not None


def encode_chunk(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_chunk(text: str) -> bytes:
    """Raises ValueError for text that is not base64."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc
