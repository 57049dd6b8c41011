"""The emulator's deterministic "model": tokenizer, reply text and token-count estimates.

Tests import these to compute exactly what the emulator will answer, so every function here
is a pure function of its arguments.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence

REPLY_PREFIX = "Echo: "
"""Every reply is this prefix followed by the echoed input text."""

THINKING_PREFIX = "Thinking about: "
"""A thinking model's `thinking` is this prefix followed by the same input text."""

PROMPT_TOKENS_PER_MESSAGE = 4
"""Overhead charged per message (or prompt part), like a chat template's role markers."""

VOCABULARY_SIZE = 32_000

# Whitespace is glued to the word that follows it, so "".join(tokenize(s)) == s always holds
# and a trailing run of whitespace becomes a token of its own.
_TOKEN_PATTERN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text at word boundaries; each token keeps its leading whitespace."""
    return _TOKEN_PATTERN.findall(text)


def reply_text(text: str) -> str:
    """The full (uncut) reply to an input text."""
    return REPLY_PREFIX + text


def thinking_text(text: str) -> str:
    """What a thinking model thinks (streamed as `thinking`, before any content)."""
    return THINKING_PREFIX + text


def reply_tokens(text: str, num_predict: int | None = None) -> list[str]:
    """The tokens emitted for an input text, cut to `num_predict` when it is positive."""
    tokens = tokenize(reply_text(text))
    if num_predict is not None and num_predict > 0:
        return tokens[:num_predict]
    return tokens


def expected_reply(text: str, num_predict: int | None = None) -> str:
    """What the emulator answers to `text` (the last user message, or the generate prompt)."""
    return "".join(reply_tokens(text, num_predict))


def expected_done_reason(text: str, num_predict: int | None = None) -> str:
    """ "length" when `num_predict` stopped the reply, else "stop".

    Ollama's runner stops as soon as `num_predict` tokens are out, before it could see an
    end-of-sequence token, so a reply of exactly `num_predict` tokens is still "length".
    """
    if num_predict is None or num_predict <= 0:
        return "stop"
    return "length" if len(tokenize(reply_text(text))) >= num_predict else "stop"


def count_prompt_tokens(parts: Iterable[str], per_part: int = PROMPT_TOKENS_PER_MESSAGE) -> int:
    """Token estimate for a prompt made of several parts (message contents, system, prompt)."""
    return sum(len(tokenize(part)) + per_part for part in parts)


def count_message_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Token estimate of chat messages: their contents' tokens plus a per-message overhead."""
    return count_prompt_tokens(_content(message) for message in messages)


def token_ids(tokens: Iterable[str]) -> list[int]:
    """Stable fake vocabulary ids, used for generate's `context` array."""
    return [zlib.crc32(token.encode()) % VOCABULARY_SIZE for token in tokens]


def last_user_content(messages: Sequence[Mapping[str, object]]) -> str:
    """The text a chat reply echoes: the last user message's content ("" if there is none)."""
    for message in reversed(messages):
        role = message.get("role")
        # Ollama lowercases roles on decode, so "User" counts as a user message.
        if isinstance(role, str) and role.lower() == "user":
            return _content(message)
    return ""


def _content(message: Mapping[str, object]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""
