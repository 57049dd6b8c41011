"""The raw token estimate of chat messages: `chars / 4` plus a template overhead per message.

The backend's tokenizer is not at hand (and differs per model). The session store scales this
raw estimate by a per-model factor it learns from the backend's counts
(`corral_session_store.tokens`); the gateway, which sizes stateless prompts without that
calibration, uses it as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral_common import jsonutil

CHARS_PER_TOKEN = 4.0
MESSAGE_OVERHEAD = 4
"""Role markers and separators a chat template wraps around each message."""
PROMPT_OVERHEAD = 3
"""The template's start of the answer (`<|assistant|>` and the like)."""
IMAGE_TOKENS = 768
"""What one image costs a vision model, roughly (llava: 576; others more)."""


def raw_message_tokens(message: Mapping[str, Any]) -> float:
    """The unscaled estimate of one message: its text and its template overhead."""
    chars = len(str(message.get("content") or ""))
    tool_calls = message.get("tool_calls")
    if tool_calls:
        chars += len(jsonutil.dumps(tool_calls))
    images = message.get("images")
    image_tokens = IMAGE_TOKENS * len(images) if isinstance(images, list) else 0
    return MESSAGE_OVERHEAD + chars / CHARS_PER_TOKEN + image_tokens


def raw_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> float:
    return PROMPT_OVERHEAD + sum(raw_message_tokens(m) for m in messages)
