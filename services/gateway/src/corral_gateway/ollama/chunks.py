"""Ollama's chunk shape: queue chunks, Corral's additions, non-stream assembly, and the
`OllamaChunks` the relay writes native answers with (NDJSON)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from corral_common.errors import CorralError
from corral_common.messages import Done, JobKind, Tokens
from corral_gateway.encoders import Data, Frame, NdjsonEncoder, StreamEncoder
from corral_gateway.hub import RawTokens


def created_at() -> str:
    """RFC 3339 in UTC with a Z, as Ollama writes `created_at`."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def empty_delta(kind: JobKind) -> dict[str, Any]:
    if kind == "chat":
        return {"message": {"role": "assistant", "content": ""}}
    return {"response": ""}


def queue_chunk(kind: JobKind, model: str, position: int, estimated_wait_ms: int) -> dict[str, Any]:
    """A chunk every Ollama client parses as an empty delta, carrying the queue position."""
    return {
        "model": model,
        "created_at": created_at(),
        **empty_delta(kind),
        "queue_info": {"position": position, "estimated_wait_ms": estimated_wait_ms},
        "done": False,
    }


def corral_fields(
    *,
    request_id: str,
    session_id: str | None,
    waited_ms: int,
    first_position: int,
    messages_used: int,
    final: dict[str, Any],
    context_info: dict[str, Any] | None = None,
    estimate: Callable[[], int] | None = None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"request_id": request_id}
    if session_id is not None:
        fields["session_id"] = session_id
    fields["queue_info"] = {"wait_time_ms": waited_ms, "position": first_position}
    # What was sent: the session store's account when it assembled the context, else the
    # client's own messages as they came. tokens_used is the backend's count either way.
    fields["context_info"] = {
        "truncated": False,
        "messages_used": messages_used,
        **(context_info or {}),
    }
    info = fields["context_info"]
    measured = final.get("prompt_eval_count")
    if isinstance(measured, int) and measured > 0:
        info["tokens_used"] = measured
    else:
        # A backend that does not count the prompt (llama-cpp-python's server streams no
        # usage; Ollama leaves out a count of 0): the estimate, said to be one, not a 0.
        if "tokens_used" not in info and estimate is not None:
            info["tokens_used"] = estimate()
        if "tokens_used" in info:
            info["estimated"] = True
        info.setdefault("tokens_used", 0)
    return fields


def assemble(
    kind: JobKind, chunks: list[dict[str, Any]], final: dict[str, Any], text: str
) -> dict[str, Any]:
    """One response object from a whole stream, as Ollama builds its non-streaming answers:
    text and thinking concatenated, tool calls gathered, metrics from the final chunk."""
    thinking: list[str] = []
    tool_calls: list[Any] = []
    for chunk in [*chunks, final]:
        part = chunk.get("message", chunk) if kind == "chat" else chunk
        if isinstance(part, dict):
            if part.get("thinking"):
                thinking.append(str(part["thinking"]))
            if part.get("tool_calls"):
                tool_calls.extend(part["tool_calls"])
    answer = dict(final)
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = "".join(thinking)
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer["message"] = message
    else:
        answer["response"] = text
        if thinking:
            answer["thinking"] = "".join(thinking)
    return answer


class OllamaChunks:
    """The relay's `ChunkShape` for Ollama's native streams: the backend's chunks unchanged,
    queue feedback as empty deltas every client parses, errors as a last `{"error"}` line."""

    def __init__(self, kind: JobKind, model: str) -> None:
        self.kind = kind
        self.model = model

    def queue(self, position: int, wait_ms: int) -> Frame:
        return Data(queue_chunk(self.kind, self.model, position, wait_ms))

    def chunk(self, chunk: dict[str, Any]) -> list[Frame]:
        return [Data(chunk)]

    def passthrough(self, tokens: Tokens, encoder: StreamEncoder) -> bytes | None:
        """The batch's NDJSON as the backend wrote it, when it came with its chunks' text
        (`hub.RawTokens`): the chunks go out unchanged, so encoding them again would only
        spend the gateway's time on the same bytes. None: encode chunk by chunk."""
        if not isinstance(tokens, RawTokens) or not isinstance(encoder, NdjsonEncoder):
            return None
        return b"\n".join(tokens.lines) + b"\n" if tokens.lines else b""

    def final(self, done: Done, extras: dict[str, Any]) -> list[Frame]:
        return [Data({**done.final, **extras})]

    def failure(self, error: CorralError) -> list[Frame]:
        return [Data({"error": error.message})]

    def whole(self, chunks: list[dict[str, Any]], done: Done, extras: dict[str, Any]) -> Any:
        return {**assemble(self.kind, chunks, done.final, done.text), **extras}
