"""Clipping what clients sent before it is echoed in an error text or written to a log line: a
10 MB model name must come back as a recognisable prefix, not in full."""

from __future__ import annotations

CLIP_CHARS = 64


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """`text` if it is at most `limit` characters, else its first `limit` characters and a note
    of how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"
