"""The emulator's deterministic embedding "model".

A text's raw vector is the sum of one pseudo-random vector per lower-cased word (from a hash of
the word), so texts that share words point in similar directions and search demos behave
plausibly. Values are float32, as a real runner returns them. Tests import these functions to
compute exactly what the emulator answers.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence

_WORD = re.compile(r"\w+")
_UINT32_SCALE = 2.0 / 0xFFFFFFFF


def raw_embedding(text: str, length: int) -> list[float]:
    """The unnormalised vector (what the legacy `/api/embeddings` returns)."""
    words = _WORD.findall(text.lower())
    if not words and text:
        # Punctuation-only text still deserves a vector of its own.
        words = [text]
    total = [0.0] * length
    for word in words:
        for index, value in enumerate(_word_vector(word, length)):
            total[index] += value
    return [to_float32(value) for value in total]


def normalized_embedding(text: str, length: int, dimensions: int = 0) -> list[float]:
    """`/api/embed`'s vector: L2-normalised; `dimensions` (when smaller than `length`) keeps
    that many leading values and normalises again, as Ollama's EmbedHandler does."""
    vector = normalize(raw_embedding(text, length))
    if 0 < dimensions < len(vector):
        vector = normalize(vector[:dimensions])
    return vector


def normalize(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    # A zero vector stays zero, as in Go (which divides by max(norm, 1e-12)).
    scale = 1.0 / max(norm, 1e-12)
    return [to_float32(value * scale) for value in vector]


def to_float32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def float32_json(value: float) -> float:
    """The float whose shortest repr is the shortest text that reads back as this float32,
    so the JSON looks like Go's float32 encoding (`0.0123`, not `0.012299999594688416`)."""
    for precision in range(1, 10):
        candidate = float(f"{value:.{precision}g}")
        if to_float32(candidate) == value:
            return candidate
    return value


def _word_vector(word: str, length: int) -> tuple[float, ...]:
    stream = hashlib.shake_256(word.encode()).digest(4 * length)
    return tuple(n * _UINT32_SCALE - 1.0 for n in struct.unpack(f"<{length}I", stream))
