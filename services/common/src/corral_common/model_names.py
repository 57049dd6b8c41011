"""Ollama's model-name matching: `llama3.2`, `llama3.2:latest` and
`registry.ollama.ai/library/llama3.2:latest` all name the same model, case-insensitively."""

from __future__ import annotations

import re

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


# Ollama's name grammar (types/model/name.go): `[host/][namespace/]model[:tag]`, each part
# starting with a letter, digit or `_`; `.` is refused in a namespace and `:` allowed only in a
# host (its port). Pull and push refuse what does not parse.
_NAME_PARTS = (
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),  # host
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),  # namespace
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),  # model
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def is_valid_model_name(name: str) -> bool:
    rest, tag = name, DEFAULT_TAG
    if name.rfind(":") > name.rfind("/"):
        rest, _, tag = name.rpartition(":")
    segments = rest.split("/")
    parts = (
        segments[-2:]
        if len(segments) < 3
        else [
            "/".join(segments[:-2]).split("://", 1)[-1],
            *segments[-2:],
        ]
    )
    known = _NAME_PARTS[3 - len(parts) :]
    return bool(_TAG.fullmatch(tag)) and all(
        pattern.fullmatch(part) for pattern, part in zip(known, parts, strict=True)
    )
