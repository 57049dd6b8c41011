"""The one interface between the lane and a model server.

Everything above this module (the executor, the status reporter, the app) talks to a `Backend`
and never knows which server it is: Ollama (`ollama.py`) speaks its own API; an
OpenAI-compatible server would be translated to the same shapes. What crosses the interface is
Ollama-shaped, because that is what Corral's gateway relays and its clients expect: a
generation's chunks are Ollama's `/api/chat` or `/api/generate` chunks (`Chunk`; the last one
`done`, with its counts and durations), an embedding answer is `/api/embed`'s or
`/api/embeddings`'s (`EmbedAnswer`, `EmbeddingsAnswer`), a load or unload answer is Ollama's
bare `done` object (`DoneAnswer`, a final generate chunk), the model lists are `/api/tags` and
`/api/ps` entries (`TagEntry`, `RunningModel`), a model's details `/api/show`'s (`ShowAnswer`).

Those types are `TypedDict`s (`corral_common.ollama_shapes`, shared with whatever else produces
or reads Ollama's shapes): at runtime each is the plain dict the server's JSON parsed into, so
the types cost nothing on the hot path (a generation relays a chunk per token, often as the
very bytes it was read as: `ChunkRun`) and what is relayed is the wire shape as it came, every
field kept. They say what Ollama documents; nothing checks an answer against them on arrival,
so readers still `.get` and check what they act on.

The failures a backend raises are the ones the lane already tells apart (retries.py decides
which may be retried, the executor what each client is told):
- `CorralError` with an aiohttp error as its `__cause__` (`corral_common.ollama.unreachable`):
  the backend could not be reached or went silent. 503 `ollama_connection_error` when nothing
  was started (refused, reset before any response, a connect timeout: retryable), 504
  `backend_timeout` when it stopped answering (never retried: it may be working).
- `CorralError` without a cause (`corral_common.ollama.status_error`): the backend answered
  with an error status, passed through with its own status and text (404 `model_not_found`;
  502/503 are retryable, nothing ran).
- `BackendStreamError`: the response had begun and then failed (an error line, a cut): never
  retried, the client is told what it had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, final

from corral_common.ollama_shapes import (
    Chunk,
    DoneAnswer,
    EmbedAnswer,
    EmbeddingsAnswer,
    Message,
    Metrics,
    RunningModel,
    ShowAnswer,
    TagEntry,
    ToolCall,
)
from corral_common.openai_models import BackendKind

__all__ = [
    "Backend",
    "BackendKind",
    "BackendStreamError",
    "Chunk",
    "ChunkRun",
    "DoneAnswer",
    "EmbedAnswer",
    "EmbedKind",
    "EmbeddingsAnswer",
    "Message",
    "Metrics",
    "Piece",
    "RunningModel",
    "ShowAnswer",
    "TagEntry",
    "ToolCall",
]

StreamKind = Literal["chat", "generate"]
EmbedKind = Literal["embed", "embeddings"]


# Final (to the type checker only): the executor tells a run from a chunk by `type(piece) is
# ChunkRun`, cheaper per token than isinstance, and a final class lets that narrow both ways.
@final
@dataclass(frozen=True, slots=True)
class ChunkRun:
    """Non-final chunks read together (none of them `done`, none an error), each twice: parsed,
    and as the JSON text it is relayed as (`lines[i]` is `chunks[i]`, one line without its
    newline). A fast backend's stream arrives many chunks per read; taking them as a run costs
    the executor one step per read instead of one per token, and relaying the text as read
    spares encoding each chunk again."""

    chunks: list[Chunk]
    lines: list[bytes]


# What a generation's stream yields: one chunk, or a run of non-final ones.
Piece = Chunk | ChunkRun


class BackendStreamError(Exception):
    """The backend failed after its response had started (an `{"error": ...}` line, a cut)."""


class Backend(Protocol):
    # Which kind of server this is, and where (for /health: never shown with credentials).
    kind: BackendKind
    base_url: str

    def stream(
        self, kind: StreamKind, payload: dict[str, Any]
    ) -> AbstractAsyncContextManager[AsyncIterator[Piece]]:
        """Open a chat or generate; the context yields its chunks (single, or non-final ones
        as a `ChunkRun`). Leaving the block closes the upstream response, which is what stops
        a generation on the server."""

    async def embed(
        self, kind: EmbedKind, payload: dict[str, Any]
    ) -> EmbedAnswer | EmbeddingsAnswer:
        """One embedding request (`/api/embed`, or the legacy `/api/embeddings` and its
        shape)."""

    async def load(self, payload: dict[str, Any]) -> DoneAnswer:
        """Load the payload's model; answered like Ollama's empty generate (`done_reason`
        `load`)."""

    async def unload(self, payload: dict[str, Any]) -> DoneAnswer:
        """Unload the payload's model (Ollama's `keep_alive: 0` idiom)."""

    async def list_models(self) -> list[TagEntry]:
        """The models the server has, as `/api/tags` entries."""

    async def running(self) -> list[RunningModel]:
        """The models the server holds in memory, as `/api/ps` entries."""

    async def show(self, model: str) -> ShowAnswer:
        """One model's details, as `/api/show` answers them."""

    async def version(self) -> str:
        """The server's version (a cheap probe: it answers, or it is down)."""
