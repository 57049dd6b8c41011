"""The "remote registry": models `/api/pull` can fetch (and `/api/create` fetches for an unknown
`from`). Configurable through `/_emulator/config` as `registry`."""

from __future__ import annotations

from corral_emulator.layers import Layer
from corral_emulator.models import DEFAULT_MODELS, ModelSpec

MANIFEST_NOT_FOUND = "pull model manifest: file does not exist"
"""What Ollama streams when the registry answers 404 for a manifest."""

REGISTRY_EXTRAS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="llama3.2:1b",
        context_length=4096,
        parameter_size="1.2B",
        quantization_level="Q8_0",
        size=1_321_098_329,
        embedding_length=2048,
    ),
    ModelSpec(
        name="all-minilm",
        context_length=512,
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        size=45_960_996,
        capabilities=("embedding",),
        embedding_length=384,
    ),
)
DEFAULT_REGISTRY: tuple[ModelSpec, ...] = DEFAULT_MODELS + REGISTRY_EXTRAS
"""Everything the emulator starts with, plus a model to pull for each kind (chat, embedding)."""


def pull_layers(spec: ModelSpec) -> tuple[Layer, ...]:
    """The blobs a pull downloads, in Ollama's order: the manifest's layers, then its config."""
    return (*spec.layers, spec.config_layer)
