"""Response objects for /api/chat and /api/generate, in Ollama's field order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corral_emulator.timestamps import now_rfc3339


@dataclass(frozen=True, slots=True)
class Metrics:
    """Ollama's `api.Metrics`; all durations are integer nanoseconds."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def to_mapping(self) -> dict[str, int]:
        # Every Metrics field is `omitempty` in Go, so zeros are left out.
        fields = {
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }
        return {key: value for key, value in fields.items() if value}


class ChunkShape(Protocol):
    def token(self, text: str) -> dict[str, object]:
        """A `done: false` chunk carrying one token."""

    def final(
        self, text: str, done_reason: str, metrics: Metrics, context: tuple[int, ...] | None
    ) -> dict[str, object]:
        """The `done: true` object: the stream's last chunk, or the whole non-stream reply."""

    def bare_done(self, done_reason: str) -> dict[str, object]:
        """The single object answering a load or unload request."""


@dataclass(frozen=True, slots=True)
class ChatChunks:
    model: str
    """Echoed exactly as the client spelled it."""

    def token(self, text: str) -> dict[str, object]:
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }

    def final(
        self, text: str, done_reason: str, metrics: Metrics, context: tuple[int, ...] | None
    ) -> dict[str, object]:
        return {**self.bare_done(done_reason, text), **metrics.to_mapping()}

    def bare_done(self, done_reason: str, text: str = "") -> dict[str, object]:
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": text},
            "done_reason": done_reason,
            "done": True,
        }


@dataclass(frozen=True, slots=True)
class GenerateChunks:
    model: str

    def token(self, text: str) -> dict[str, object]:
        return {"model": self.model, "created_at": now_rfc3339(), "response": text, "done": False}

    def final(
        self, text: str, done_reason: str, metrics: Metrics, context: tuple[int, ...] | None
    ) -> dict[str, object]:
        chunk = self.bare_done(done_reason, text)
        if context is not None:
            chunk["context"] = list(context)
        return {**chunk, **metrics.to_mapping()}

    def bare_done(self, done_reason: str, text: str = "") -> dict[str, object]:
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "response": text,
            "done": True,
            "done_reason": done_reason,
        }
