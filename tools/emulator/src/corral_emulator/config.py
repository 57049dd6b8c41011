"""Emulator settings. The object is mutable because `/_emulator/config` changes it at runtime."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from corral_emulator.models import (
    DEFAULT_MODELS,
    ModelSpec,
    model_spec_from_mapping,
    model_spec_to_mapping,
)
from corral_emulator.registry import DEFAULT_REGISTRY

OLLAMA_VERSION = "0.12.6"
DEFAULT_KEEP_ALIVE_SECONDS = 300.0
"""`OLLAMA_KEEP_ALIVE`'s default of 5m."""

RUNTIME_KNOBS = ("token_delay_ms", "load_ms", "prompt_ms_per_token", "pull_step_ms")
_MODEL_LISTS = ("models", "registry")


@dataclass(slots=True)
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 11434
    token_delay_ms: float = 0.0
    """Sleep before each generated token."""
    load_ms: float = 0.0
    """Paid once when a model that is not loaded is first used."""
    prompt_ms_per_token: float = 0.0
    """Prompt evaluation time, per prompt token."""
    pull_step_ms: float = 2.0
    """Sleep before each progress step of a pull; keep it small so tests stay fast."""
    pull_steps: int = 4
    """How many `completed` updates a pull reports for each layer it downloads in full."""
    models: tuple[ModelSpec, ...] = field(default_factory=lambda: DEFAULT_MODELS)
    """What is "pulled" at start, and again after `/_emulator/reset`."""
    registry: tuple[ModelSpec, ...] = field(default_factory=lambda: DEFAULT_REGISTRY)
    """What `/api/pull` can fetch."""
    record_limit: int = 50
    """How many request bodies to keep per endpoint."""
    default_keep_alive_s: float = DEFAULT_KEEP_ALIVE_SECONDS
    version: str = OLLAMA_VERSION
    openai_only: bool = False
    """Serve only the OpenAI-compatible `/v1` API (as llama-cpp-python's server does), not
    Ollama's `/api`; `/v1` is served beside `/api` otherwise, as Ollama does."""

    def apply(self, changes: Mapping[str, object]) -> None:
        """Apply a `/_emulator/config` body; validates everything before changing anything."""
        unknown = set(changes) - {
            *RUNTIME_KNOBS,
            *_MODEL_LISTS,
            "pull_steps",
            "default_keep_alive_s",
        }
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        numbers: dict[str, float] = {}
        for key in (*RUNTIME_KNOBS, "default_keep_alive_s"):
            if key in changes:
                value = changes[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"'{key}' must be a non-negative number")
                numbers[key] = float(value)
        pull_steps = changes.get("pull_steps", self.pull_steps)
        if isinstance(pull_steps, bool) or not isinstance(pull_steps, int) or pull_steps < 1:
            raise ValueError("'pull_steps' must be a positive integer")
        lists = {key: _model_list(changes[key], key) for key in _MODEL_LISTS if key in changes}
        for key, number in numbers.items():
            setattr(self, key, number)
        self.pull_steps = pull_steps
        for key, specs in lists.items():
            setattr(self, key, specs)

    def to_mapping(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "token_delay_ms": self.token_delay_ms,
            "load_ms": self.load_ms,
            "prompt_ms_per_token": self.prompt_ms_per_token,
            "pull_step_ms": self.pull_step_ms,
            "pull_steps": self.pull_steps,
            "default_keep_alive_s": self.default_keep_alive_s,
            "record_limit": self.record_limit,
            "version": self.version,
            "openai_only": self.openai_only,
            "models": [model_spec_to_mapping(spec) for spec in self.models],
            "registry": [model_spec_to_mapping(spec) for spec in self.registry],
        }


def _model_list(raw: object, key: str) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError(f"'{key}' must be a list of objects")
    return tuple(model_spec_from_mapping(item) for item in raw)
