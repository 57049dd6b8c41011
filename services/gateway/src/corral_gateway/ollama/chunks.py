"""Shapes of what the gateway writes: queue chunks, Corral's additions, non-stream assembly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.messages import JobKind

NDJSON = "application/x-ndjson"


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
    measured = final.get("prompt_eval_count")
    if isinstance(measured, int) and measured > 0:
        fields["context_info"]["tokens_used"] = measured
    fields["context_info"].setdefault("tokens_used", 0)
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


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """JSON as Ollama writes it (`application/json; charset=utf-8`), serialised with orjson."""
    return web.Response(
        body=jsonutil.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
