"""The model catalogue: what the emulator pretends to have pulled, and Ollama's name matching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_MODIFIED_AT = "2025-10-01T12:00:00.123456789+02:00"
"""Go renders `modified_at` in local time, offset included; clients must cope with that."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One pulled model as `/api/tags`, `/api/show` and `/api/ps` describe it."""

    name: str
    context_length: int
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2_019_393_189
    capabilities: tuple[str, ...] = ("completion", "tools")
    embedding_length: int = 3072
    modified_at: str = DEFAULT_MODIFIED_AT

    @property
    def full_name(self) -> str:
        """`name:tag` with the default `latest` tag, as `/api/tags` lists it."""
        return canonical_model_name(self.name)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.full_name.encode()).hexdigest()

    @property
    def registry_name(self) -> str:
        """The fully qualified name Ollama puts in capability errors."""
        full = self.full_name
        if full.count("/") == 0:
            full = "library/" + full
        if full.count("/") == 1:
            full = "registry.ollama.ai/" + full
        return full

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(name="llama3.2", context_length=4096),
    ModelSpec(
        name="qwen2.5:0.5b",
        context_length=32768,
        family="qwen2",
        parameter_size="494.03M",
        size=397_821_319,
        embedding_length=896,
    ),
    # Deliberately tiny context so history truncation is easy to provoke.
    ModelSpec(
        name="tiny",
        context_length=256,
        parameter_size="15M",
        quantization_level="Q8_0",
        size=16_777_216,
        capabilities=("completion",),
        embedding_length=288,
    ),
    ModelSpec(
        name="nomic-embed-text",
        context_length=2048,
        family="nomic-bert",
        parameter_size="137M",
        quantization_level="F16",
        size=274_302_450,
        capabilities=("embedding",),
        embedding_length=768,
    ),
)


def canonical_model_name(name: str) -> str:
    """Lower-cased, with `:latest` added when no tag is given (`llama3.2` == `llama3.2:latest`)."""
    lowered = name.strip().lower()
    last_segment = lowered.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        lowered += ":latest"
    return lowered


def model_spec_from_mapping(data: Mapping[str, object]) -> ModelSpec:
    """Build a spec from JSON (`{"name": ..., "context_length": ..., ...}`); unset keys default."""
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("model spec needs a non-empty string 'name'")
    kwargs: dict[str, object] = {"name": name}
    for key in ("family", "parameter_size", "quantization_level", "modified_at"):
        if key in data:
            kwargs[key] = _require(data[key], str, key)
    for key in ("context_length", "size", "embedding_length"):
        if key in data:
            kwargs[key] = _require(data[key], int, key)
    kwargs.setdefault("context_length", 4096)
    if "capabilities" in data:
        capabilities = data["capabilities"]
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise ValueError("'capabilities' must be a list of strings")
        kwargs["capabilities"] = tuple(capabilities)
    return ModelSpec(**kwargs)  # type: ignore[arg-type]


def model_spec_to_mapping(spec: ModelSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "context_length": spec.context_length,
        "family": spec.family,
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization_level,
        "size": spec.size,
        "capabilities": list(spec.capabilities),
        "embedding_length": spec.embedding_length,
        "modified_at": spec.modified_at,
    }


@dataclass(slots=True)
class ModelCatalogue:
    """Name lookup over the configured models, ignoring case and the default tag."""

    specs: tuple[ModelSpec, ...]
    _by_name: dict[str, ModelSpec] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {spec.full_name: spec for spec in self.specs}

    @classmethod
    def of(cls, specs: Iterable[ModelSpec]) -> ModelCatalogue:
        return cls(tuple(specs))

    def find(self, name: str) -> ModelSpec | None:
        if not name.strip():
            return None
        return self._by_name.get(canonical_model_name(name))


def _require(value: object, kind: type, key: str) -> object:
    # bool is an int subclass; JSON true must not pass as a context length.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"'{key}' must be of type {kind.__name__}")
    return value
