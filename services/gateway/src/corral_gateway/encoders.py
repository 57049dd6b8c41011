"""How a stream's frames become bytes on the wire: NDJSON (Ollama) and SSE (OpenAI).

The relay (relay.py) decides *what* a client is told and when; a surface's chunk shape decides
what each piece looks like (`relay.ChunkShape`); an encoder only frames them. A `Data` frame is
one JSON object; a `Comment` is out-of-band text a client's parser skips (SSE comment lines,
which OpenAI's SDKs ignore: Corral's queue feedback on `/v1`). NDJSON has no comments, so an
Ollama shape never produces one (its queue feedback is an empty delta), and the NDJSON encoder
drops any.

A heartbeat keeps a quiet stream alive before its first token (proxies and clients time out
idle connections): an SSE comment line; NDJSON has none, since every line is parsed and
Ollama's own streams carry nothing but chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from corral_common import jsonutil

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Data:
    """One JSON object for the client."""

    obj: Any


@dataclass(frozen=True, slots=True)
class Comment:
    """Text a client's parser ignores (keeps the connection alive, carries queue feedback)."""

    text: str


Frame = Data | Comment


class StreamEncoder(Protocol):
    """Frames to bytes, for one content type."""

    content_type: str

    def encode(self, frame: Frame) -> bytes:
        """The bytes of one frame (possibly none)."""
        ...

    def end(self) -> bytes:
        """What closes a complete stream (possibly nothing)."""
        ...

    def heartbeat(self) -> bytes:
        """Bytes every client's parser skips, to keep a quiet stream alive (possibly none)."""
        ...


class NdjsonEncoder:
    """One JSON object per line, no blank lines: Ollama's streams."""

    content_type = NDJSON

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Comment):
            return b""  # NDJSON has no comments; every line is parsed
        return jsonutil.ndjson_line(frame.obj)

    def end(self) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return b""  # nothing an NDJSON client would not parse


class SseEncoder:
    """Server-sent events as OpenAI streams them: `data: <json>` events, `: text` comments and
    a closing `data: [DONE]`."""

    content_type = EVENT_STREAM

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Comment):
            # One comment line per line of text: a newline inside would end the comment and
            # start a field the client parses.
            lines = frame.text.splitlines() or [""]
            return b"".join(f": {line}\n".encode() for line in lines) + b"\n"
        return b"data: " + jsonutil.dumps(frame.obj) + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def heartbeat(self) -> bytes:
        return self.encode(Comment("heartbeat"))
