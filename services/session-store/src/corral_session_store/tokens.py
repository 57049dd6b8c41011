"""Token estimates for context assembly, calibrated per model against the backend's counts.

The backend's tokenizer is not at hand (and differs per model), so a message is estimated as
`chars / 4` plus a fixed per-message overhead for the chat template's role markers, scaled by a
per-model factor learnt from `done` events: the backend's `prompt_eval_count` for a prompt,
divided by our raw (unscaled) estimate for the same prompt. The factor is an exponentially
weighted mean, clamped to a sane range, so one odd sample (a cached prompt the backend did not
re-evaluate, a truncated one) moves it only a little.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from corral_common.token_estimate import (
    CHARS_PER_TOKEN,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PROMPT_OVERHEAD,
    raw_message_tokens,
    raw_prompt_tokens,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "PROMPT_OVERHEAD",
    "Calibration",
    "TokenEstimator",
    "raw_message_tokens",
    "raw_prompt_tokens",
]

MIN_FACTOR = 0.25
MAX_FACTOR = 4.0
# How much one sample moves the factor; with 0.2, ten samples carry ~90% of the weight.
SMOOTHING = 0.2
# A ratio outside this range says the sample is not a plain, fully evaluated prompt.
_PLAUSIBLE = (0.2, 5.0)


@dataclass(frozen=True)
class TokenEstimator:
    """Estimates for one model; `factor` is its calibration (1.0 until measured)."""

    factor: float = 1.0

    def message(self, message: Mapping[str, Any]) -> int:
        return math.ceil(raw_message_tokens(message) * self.factor)

    def messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        return sum(self.message(m) for m in messages)

    @property
    def prompt_overhead(self) -> int:
        return math.ceil(PROMPT_OVERHEAD * self.factor)


@dataclass
class Calibration:
    """The running factor of one model."""

    factor: float = 1.0
    samples: int = 0

    def observe(self, raw_estimate: float, prompt_eval_count: int) -> bool:
        """Fold in one measured prompt; False (and no change) if the sample looks unusable."""
        if raw_estimate <= 0 or prompt_eval_count <= 0:
            return False
        ratio = prompt_eval_count / raw_estimate
        if not _PLAUSIBLE[0] <= ratio <= _PLAUSIBLE[1]:
            return False
        # The first samples count fully-ish, so a fresh model converges fast.
        weight = max(SMOOTHING, 1.0 / (self.samples + 1))
        factor = (1 - weight) * self.factor + weight * ratio
        self.factor = min(MAX_FACTOR, max(MIN_FACTOR, factor))
        self.samples += 1
        return True

    def estimator(self) -> TokenEstimator:
        return TokenEstimator(self.factor)
