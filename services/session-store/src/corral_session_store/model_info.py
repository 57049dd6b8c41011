"""A model's context length, from the model-manager service, cached: the store's use of
`corral_common.context_lengths` (the gateway sizes stateless prompts with the same cache)."""

from __future__ import annotations

from corral_common.context_lengths import CachedContextLengths, ContextLengths, StaticContextLengths

__all__ = ["CachedContextLengths", "ContextLengths", "StaticContextLengths"]
