"""The model catalogue: what the emulator pretends to have pulled, and Ollama's name matching."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral_emulator.layers import (
    Layer,
    MediaType,
    config_layer,
    content_layer,
    json_layer,
    manifest_digest,
    weights_layer,
)
from corral_emulator.model_names import parse_model_name
from corral_emulator.timestamps import unix_seconds

DEFAULT_MODIFIED_AT = "2025-10-01T12:00:00.123456789+02:00"
"""Go renders `modified_at` in local time, offset included; clients must cope with that."""

# Trimmed-down llama3.2 Modelfile pieces; clients only display them.
DEFAULT_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DEFAULT_LICENSE = "Emulated model for Corral tests. Not a real model; no weights are involved."


def _default_parameters() -> dict[str, object]:
    # A fresh dict per spec: specs are frozen, but a shared dict could still be mutated.
    return {"stop": ["<|start_header_id|>", "<|eot_id|>"]}


DEFAULT_PARAMETERS: Mapping[str, object] = _default_parameters()


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
    system: str = ""
    template: str = DEFAULT_TEMPLATE
    license: tuple[str, ...] = (DEFAULT_LICENSE,)
    parameters: Mapping[str, object] = field(default_factory=_default_parameters, hash=False)
    """The Modelfile's PARAMETERs; they default the request options, as in Ollama."""
    messages: tuple[Mapping[str, str], ...] = field(default=(), hash=False)
    """The Modelfile's MESSAGEs, put before a chat's own messages."""
    weights: str = ""
    """Which weights the model uses; empty means its own. Copies and created models keep the
    weights of the model they came from, so they share its weights layer."""
    weights_digest: str = ""
    """The weights layer's digest when it is a real uploaded blob (a model created from
    `files`); empty means one derived from `weights_identity`."""

    @property
    def full_name(self) -> str:
        """`name:tag` with the default `latest` tag, as `/api/tags` lists it."""
        return canonical_model_name(self.name)

    @property
    def weights_identity(self) -> str:
        return self.weights or self.full_name

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The manifest's layers, config excluded, in the order Ollama's create leaves them."""
        if self.weights_digest:
            layers = [Layer(MediaType.MODEL, self.weights_digest, self.size)]
        else:
            layers = [weights_layer(self.weights_identity, self.size)]
        if self.template:
            layers.append(content_layer(MediaType.TEMPLATE, self.template.encode()))
        layers += [content_layer(MediaType.LICENSE, text.encode()) for text in self.license]
        if self.system:
            layers.append(content_layer(MediaType.SYSTEM, self.system.encode()))
        if self.parameters:
            layers.append(json_layer(MediaType.PARAMS, dict(self.parameters)))
        if self.messages:
            layers.append(json_layer(MediaType.MESSAGES, [dict(m) for m in self.messages]))
        return tuple(layers)

    @property
    def config_layer(self) -> Layer:
        return config_layer(self.config(), self.layers)

    @property
    def digest(self) -> str:
        return manifest_digest(self.config_layer, self.layers)

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

    def config(self) -> dict[str, object]:
        """The manifest config blob's fields (Ollama's `ConfigV2`), rootfs aside."""
        return {
            "model_format": "gguf",
            "model_family": self.family,
            "model_families": [self.family],
            "model_type": self.parameter_size,
            "file_type": self.quantization_level,
            "architecture": "amd64",
            "os": "linux",
        }

    def derive(self, **changes: Any) -> ModelSpec:
        """A model made from this one (copy, create); it keeps these weights unless told."""
        changes.setdefault("weights", self.weights_identity)
        return dataclasses.replace(self, **changes)


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
    # Models with Ollama's newer capabilities: thinking (and tools), so `think`, `thinking`
    # and tool calls have somewhere to come from.
    ModelSpec(
        name="qwen3:0.6b",
        context_length=40960,
        family="qwen3",
        parameter_size="751.63M",
        size=522_653_767,
        capabilities=("completion", "tools", "thinking"),
        embedding_length=1024,
    ),
    ModelSpec(
        name="deepseek-r1:1.5b",
        context_length=131072,
        family="qwen2",
        parameter_size="1.8B",
        size=1_117_322_599,
        capabilities=("completion", "thinking"),
        embedding_length=1536,
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
    """Lower-cased, with `:latest` added when no tag is given (`llama3.2` == `llama3.2:latest`),
    and the default host and namespace left out, so `registry.ollama.ai/library/llama3.2:latest`
    is `llama3.2:latest` too (Ollama resolves every name it is given this way)."""
    lowered = name.strip().lower()
    parsed = parse_model_name(lowered)
    if parsed.is_valid:
        return parsed.display_shortest
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
    for key in (
        "family",
        "parameter_size",
        "quantization_level",
        "modified_at",
        "system",
        "template",
        "weights",
        "weights_digest",
    ):
        if key in data:
            kwargs[key] = _require(data[key], str, key)
    for key in ("context_length", "size", "embedding_length"):
        if key in data:
            kwargs[key] = _require(data[key], int, key)
    kwargs.setdefault("context_length", 4096)
    if "capabilities" in data:
        kwargs["capabilities"] = _strings(data["capabilities"], "capabilities")
    if "license" in data:
        license_text = data["license"]
        single = isinstance(license_text, str)
        kwargs["license"] = (license_text,) if single else _strings(license_text, "license")
    if "parameters" in data:
        parameters = data["parameters"]
        if not isinstance(parameters, dict):
            raise ValueError("'parameters' must be an object")
        kwargs["parameters"] = dict(parameters)
    if "messages" in data:
        kwargs["messages"] = _messages(data["messages"])
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
        "system": spec.system,
        "template": spec.template,
        "license": list(spec.license),
        "parameters": dict(spec.parameters),
        "messages": [dict(message) for message in spec.messages],
        "weights": spec.weights,
        "weights_digest": spec.weights_digest,
    }


class ModelCatalogue:
    """Name lookup over the models, ignoring case and the default tag. Pull, copy, create and
    delete change it; `/_emulator/config` and reset rebuild it from the configured models."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._by_name = {spec.full_name: spec for spec in specs}

    @classmethod
    def of(cls, specs: Iterable[ModelSpec]) -> ModelCatalogue:
        return cls(specs)

    @property
    def specs(self) -> tuple[ModelSpec, ...]:
        return tuple(self._by_name.values())

    def find(self, name: str) -> ModelSpec | None:
        if not name.strip():
            return None
        return self._by_name.get(canonical_model_name(name))

    def put(self, spec: ModelSpec) -> None:
        """Add a model, replacing any of the same name (as a new manifest does)."""
        self._by_name.pop(spec.full_name, None)
        self._by_name[spec.full_name] = spec

    def remove(self, name: str) -> ModelSpec | None:
        if not name.strip():
            return None
        return self._by_name.pop(canonical_model_name(name), None)

    def listing(self) -> list[ModelSpec]:
        """Most recently modified first (whole seconds, stable), like `/api/tags`."""
        return sorted(self._by_name.values(), key=lambda s: -unix_seconds(s.modified_at))

    def has_blob(self, digest: str) -> bool:
        """Whether some model already holds a layer with this digest (Ollama's blob cache)."""
        return any(
            layer.digest == digest
            for spec in self._by_name.values()
            for layer in (*spec.layers, spec.config_layer)
        )


def _require(value: object, kind: type, key: str) -> object:
    # bool is an int subclass; JSON true must not pass as a context length.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"'{key}' must be of type {kind.__name__}")
    return value


def _strings(value: object, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"'{key}' must be a list of strings")
    return tuple(value)


def _messages(value: object) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(item, dict) and all(isinstance(v, str) for v in item.values()) for item in value
    ):
        raise ValueError('\'messages\' must be a list of {"role", "content"} objects')
    return tuple(dict(item) for item in value)
