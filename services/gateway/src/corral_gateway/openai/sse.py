"""Server-Sent Events framing for the `/v1` streams, as Ollama writes them (`data: <json>\\n\\n`,
ending `data: [DONE]\\n\\n`), plus Corral's queue feedback and heartbeats as comment lines.

A comment line (starting with `:`) is ignored by every SSE parser, the OpenAI SDKs' included, so
a client waiting in the queue sees no event at all: never an empty delta, and never a chunk with
`finish_reason` set (Open WebUI's conversion of Ollama-style queue chunks produced a premature
`finish_reason: "stop"`). Each comment is its own frame (followed by a blank line), so parsers
that split the stream on blank lines and keep only frames starting with `data: ` (Ollama's own
test helper does) never see a comment glued to the next data line.
"""

from __future__ import annotations

from typing import Any

from corral_common import jsonutil

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": heartbeat\n\n"


def data_event(obj: Any) -> bytes:
    """One `data:` event; orjson never writes a newline inside a JSON document."""
    return b"data: " + jsonutil.dumps(obj) + b"\n\n"


def comment(text: str) -> bytes:
    """A comment frame; line breaks in `text` become spaces so it stays one comment line."""
    flat = " ".join(text.splitlines())
    return b": " + flat.encode() + b"\n\n"


def queue_text(position: int, estimated_wait_ms: int) -> str:
    """The queue feedback's text, for an encoder that frames comments itself."""
    return f"queue position={position} estimated_wait_ms={estimated_wait_ms}"


def queue_comment(position: int, estimated_wait_ms: int) -> bytes:
    """Where the request stands in the lane, while it waits: `: queue position=2
    estimated_wait_ms=3000`. Position 0 means it is running."""
    return comment(queue_text(position, estimated_wait_ms))


def heartbeat() -> bytes:
    """Keeps proxies and clients from timing out an idle stream (a long wait or a long prompt
    evaluation) without producing an event."""
    return HEARTBEAT
