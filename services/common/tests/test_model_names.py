"""Ollama's model-name grammar, as pull and push apply it."""

from __future__ import annotations

import pytest

from corral_common.model_names import is_valid_model_name


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2",
        "llama3.2:latest",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2:latest",
        "http://host:5000/ns/m:t",
        "_x",
        "m:t.1",
        "x" * 80,
    ],
)
def test_names_ollama_accepts(name: str) -> None:
    assert is_valid_model_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "!", "m:", "/m", "ns//m", "ns.x/m", "-x", "a:b/c", "x" * 81, "é", "a b", "m:-t"],
)
def test_names_ollama_refuses(name: str) -> None:
    assert not is_valid_model_name(name)
