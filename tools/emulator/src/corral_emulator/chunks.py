"""Response objects for /api/chat and /api/generate, in Ollama's field order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True, slots=True)
class Extras:
    """What a reply carries beside its text: omitempty in Go, so absent when empty."""

    thinking: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()


NO_EXTRAS = Extras()


class ChunkShape(Protocol):
    def token(self, text: str) -> dict[str, object]:
        """A `done: false` chunk carrying one token."""

    def thinking(self, text: str) -> dict[str, object]:
        """A `done: false` chunk carrying one token of thinking (content empty)."""

    def tool_calls(self, calls: tuple[dict[str, Any], ...]) -> dict[str, object]:
        """The `done: false` chunk carrying the tool calls (content empty)."""

    def final(
        self,
        text: str,
        done_reason: str,
        metrics: Metrics,
        context: tuple[int, ...] | None,
        extras: Extras = NO_EXTRAS,
    ) -> dict[str, object]:
        """The `done: true` object: the stream's last chunk, or the whole non-stream reply."""

    def bare_done(self, done_reason: str) -> dict[str, object]:
        """The single object answering a load or unload request."""


def _message(text: str, extras: Extras = NO_EXTRAS) -> dict[str, object]:
    # api.Message's field order: role, content, thinking, images, tool_calls.
    message: dict[str, object] = {"role": "assistant", "content": text}
    if extras.thinking:
        message["thinking"] = extras.thinking
    if extras.tool_calls:
        message["tool_calls"] = list(extras.tool_calls)
    return message


@dataclass(frozen=True, slots=True)
class ChatChunks:
    model: str
    """Echoed exactly as the client spelled it."""

    def token(self, text: str) -> dict[str, object]:
        return self._partial(_message(text))

    def thinking(self, text: str) -> dict[str, object]:
        return self._partial(_message("", Extras(thinking=text)))

    def tool_calls(self, calls: tuple[dict[str, Any], ...]) -> dict[str, object]:
        return self._partial(_message("", Extras(tool_calls=calls)))

    def final(
        self,
        text: str,
        done_reason: str,
        metrics: Metrics,
        context: tuple[int, ...] | None,
        extras: Extras = NO_EXTRAS,
    ) -> dict[str, object]:
        return {**self.bare_done(done_reason, text, extras), **metrics.to_mapping()}

    def bare_done(
        self, done_reason: str, text: str = "", extras: Extras = NO_EXTRAS
    ) -> dict[str, object]:
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "message": _message(text, extras),
            "done_reason": done_reason,
            "done": True,
        }

    def _partial(self, message: dict[str, object]) -> dict[str, object]:
        return {"model": self.model, "created_at": now_rfc3339(), "message": message, "done": False}


@dataclass(frozen=True, slots=True)
class GenerateChunks:
    model: str

    def token(self, text: str) -> dict[str, object]:
        return {"model": self.model, "created_at": now_rfc3339(), "response": text, "done": False}

    def thinking(self, text: str) -> dict[str, object]:
        # GenerateResponse: `thinking` right after `response`.
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "response": "",
            "thinking": text,
            "done": False,
        }

    def tool_calls(self, calls: tuple[dict[str, Any], ...]) -> dict[str, object]:
        return {
            "model": self.model,
            "created_at": now_rfc3339(),
            "response": "",
            "done": False,
            "tool_calls": list(calls),
        }

    def final(
        self,
        text: str,
        done_reason: str,
        metrics: Metrics,
        context: tuple[int, ...] | None,
        extras: Extras = NO_EXTRAS,
    ) -> dict[str, object]:
        chunk = self.bare_done(done_reason, text)
        if extras.thinking:
            chunk = {**chunk, "thinking": extras.thinking}
            # Keep Go's order: thinking sits between response and done.
            chunk = {k: chunk[k] for k in ("model", "created_at", "response", "thinking")} | {
                k: v for k, v in chunk.items() if k not in ("model", "created_at", "response")
            }
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
