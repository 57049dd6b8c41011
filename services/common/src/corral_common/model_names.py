"""Ollama's model-name matching: `llama3.2`, `llama3.2:latest` and
`registry.ollama.ai/library/llama3.2:latest` all name the same model, case-insensitively."""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai/"
DEFAULT_NAMESPACE = "library/"
DEFAULT_TAG = "latest"


def canonical_model_name(name: str) -> str:
    """The short form `/api/tags` lists (`name:tag`), lower-cased for comparison."""
    short = name.strip().lower()
    if short.startswith(DEFAULT_HOST):
        short = short[len(DEFAULT_HOST) :]
    if short.startswith(DEFAULT_NAMESPACE):
        short = short[len(DEFAULT_NAMESPACE) :]
    # A tag follows the last colon after the last slash (a host may carry a port).
    if ":" not in short.rsplit("/", 1)[-1]:
        short = f"{short}:{DEFAULT_TAG}"
    return short


def same_model(a: str, b: str) -> bool:
    return canonical_model_name(a) == canonical_model_name(b)
