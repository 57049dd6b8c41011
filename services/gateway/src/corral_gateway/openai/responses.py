"""Native Ollama answers as OpenAI objects, as Ollama's `openai.go` and the writers in
`middleware/openai.go` build them: `chat.completion`, `chat.completion.chunk`, `text_completion`,
embedding lists and models.

The functions take the native JSON objects Corral relays (the backend's chunks, the final chunk
with its metrics, the assembled non-streaming answer, the model manager's `/api/tags` and
`/api/show` answers) and return JSON-ready dicts. Two small classes hold what a stream must keep
across chunks: its id, its one `created` time, whether the role was sent, how many tool calls went
out (for their `index`), and whether the stream is finished.

Corral's additions to a final answer (`request_id`, `session_id`, `queue_info`, `context_info`)
ride as extra top-level fields of the non-streaming object and of the stream's finish chunk, with
the same names as on the native surface; OpenAI SDKs keep unknown fields (`model_extra`).
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

SYSTEM_FINGERPRINT = "fp_ollama"
_FRACTION = re.compile(r"(\.\d{6})\d+")


def completion_id(prefix: str, request_id: str | None = None) -> str:
    """`chatcmpl-…` or `cmpl-…`. Ollama appends a random number below 999, which collides
    once in a thousand requests and means nothing; Corral appends the request id, so the
    answer's id names the request in logs and in `X-Request-Id`. Clients treat it as opaque."""
    return f"{prefix}-{request_id or secrets.token_hex(12)}"


def tool_call_id() -> str:
    """An id for a tool call the backend sent without one; clients need it to answer the call."""
    return f"call_{secrets.token_hex(12)}"


def unix_time(timestamp: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time as Ollama writes it (nanoseconds, `Z` or an
    offset); now when it is missing or unreadable, as Ollama does for a zero time."""
    if isinstance(timestamp, str) and timestamp:
        text = _FRACTION.sub(r"\1", timestamp.strip())
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return int(datetime.fromisoformat(text).timestamp())
        except ValueError:
            pass
    return int(time.time())


def usage(final: dict[str, Any]) -> dict[str, int]:
    """Token counts from the final chunk's metrics (zero when the backend omitted them)."""
    prompt = _count(final.get("prompt_eval_count"))
    completion = _count(final.get("eval_count"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def to_tool_calls(calls: Any, *, first_index: int | None = None) -> list[dict[str, Any]]:
    """Native tool calls (arguments an object) as OpenAI's (arguments a JSON string).

    `index` is the native `function.index`, as in Ollama, unless `first_index` is given: a
    stream numbers its calls itself, so a backend that leaves the index at 0 on every call (in
    separate chunks) cannot make a client's accumulator merge two calls into one."""
    converted: list[dict[str, Any]] = []
    if not isinstance(calls, list):
        return converted
    for position, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        if first_index is not None:
            index = first_index + position
        else:
            native_index = function.get("index")
            index = native_index if isinstance(native_index, int) else 0
        arguments = function.get("arguments")
        converted.append(
            {
                "id": call.get("id") or tool_call_id(),
                "index": index,
                "type": "function",
                "function": {
                    "name": function.get("name") or "",
                    "arguments": _arguments_json(arguments),
                },
            }
        )
    return converted


def finish_reason(done_reason: Any, tool_calls_sent: bool) -> str | None:
    """OpenAI's `finish_reason` from Ollama's `done_reason`: `stop` becomes `tool_calls` when
    tool calls went out; any other reason (`length`, `load`, `unload`) passes through as is."""
    reason = done_reason if isinstance(done_reason, str) and done_reason else None
    if reason == "stop" and tool_calls_sent:
        return "tool_calls"
    return reason


# --- chat ------------------------------------------------------------------------------------


def chat_completion(
    answer: dict[str, Any], *, completion_id: str, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A whole native `/api/chat` answer as `chat.completion` (`openai.ToChatCompletion`)."""
    message = answer.get("message")
    message = message if isinstance(message, dict) else {}
    tool_calls = to_tool_calls(message.get("tool_calls"))
    reply: dict[str, Any] = {
        "role": message.get("role") or "assistant",
        "content": message.get("content") or "",
    }
    if message.get("thinking"):
        reply["reasoning"] = message["thinking"]
    if tool_calls:
        reply["tool_calls"] = tool_calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": reply,
        "finish_reason": finish_reason(answer.get("done_reason"), bool(tool_calls)),
    }
    if answer.get("logprobs"):
        choice["logprobs"] = {"content": answer["logprobs"]}
    completion: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": unix_time(answer.get("created_at")),
        "model": answer.get("model") or "",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": usage(answer),
    }
    if answer.get("_debug_info") is not None:
        completion["_debug_info"] = answer["_debug_info"]
    return {**completion, **(extras or {})}


class ChatStream:
    """One `/v1/chat/completions` stream, as Ollama's `ChatWriter` writes it: native chunks in,
    `chat.completion.chunk` objects out.

    - the first chunk's delta carries `role: "assistant"`; a chunk with both thinking and
      content (or tool calls) is split in two, reasoning first;
    - every chunk carries the first native chunk's `created`;
    - the final native chunk's content, if any, is sent as a chunk; an empty one (the metrics
      trailer) is not, unless nothing was sent yet, so an empty completion still opens with a
      role chunk;
    - then a finish chunk with an empty delta and `finish_reason`; then, when the client asked
      for `stream_options.include_usage`, a chunk with `choices: []` and `usage`.
    The caller writes `data: [DONE]` after the last of them.
    """

    def __init__(self, *, completion_id: str, model: str, include_usage: bool = False) -> None:
        self.completion_id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created: int | None = None
        self.role_sent = False
        self.tool_calls_sent = 0
        self.finished = False

    def feed(
        self, native: dict[str, Any], extras: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The OpenAI chunks for one native chunk; the finish (and usage) chunks when `native`
        is the final one (`done: true`), with Corral's `extras` on the finish chunk."""
        if self.finished or _is_queue_chunk(native):
            # A queue chunk is Corral's own, not the model's: on this surface queue feedback is
            # an SSE comment, never a delta.
            return []
        if self.created is None:
            self.created = unix_time(native.get("created_at"))
        message = native.get("message")
        message = message if isinstance(message, dict) else {}
        done = native.get("done") is True
        chunks: list[dict[str, Any]] = []
        trailer = (
            done
            and self.role_sent
            and not message.get("content")
            and not message.get("thinking")
            and not message.get("tool_calls")
            and not native.get("logprobs")
        )
        if not trailer:
            chunks.extend(self._deltas(native, message))
        if done:
            self.finished = True
            finish = self._chunk(
                {}, finish_reason(native.get("done_reason"), self.tool_calls_sent > 0) or "stop"
            )
            chunks.append({**finish, **(extras or {})})
            if self.include_usage:
                chunks.append({**self._chunk({}, None), "choices": [], "usage": usage(native)})
        return chunks

    def _deltas(self, native: dict[str, Any], message: dict[str, Any]) -> list[dict[str, Any]]:
        content = message.get("content")
        content = content if isinstance(content, str) else ""
        thinking = message.get("thinking")
        thinking = thinking if isinstance(thinking, str) else ""
        tool_calls = to_tool_calls(message.get("tool_calls"), first_index=self.tool_calls_sent)
        self.tool_calls_sent += len(tool_calls)
        logprobs = native.get("logprobs") or None
        if thinking and (content or tool_calls):
            reasoning = self._delta(reasoning=thinking, logprobs=logprobs)
            rest = self._delta(content=content, tool_calls=tool_calls)
            return [reasoning, rest]
        return [
            self._delta(
                content=content, reasoning=thinking, tool_calls=tool_calls, logprobs=logprobs
            )
        ]

    def _delta(
        self,
        *,
        content: str | None = None,
        reasoning: str = "",
        tool_calls: Sequence[dict[str, Any]] = (),
        logprobs: Any = None,
    ) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"] = "assistant"
            self.role_sent = True
        # Content "" is kept (OpenAI's first chunk is {"role": "assistant", "content": ""});
        # only a reasoning-only half of a split chunk leaves it out.
        if content is not None:
            delta["content"] = content
        if reasoning:
            delta["reasoning"] = reasoning
        if tool_calls:
            delta["tool_calls"] = list(tool_calls)
        chunk = self._chunk(delta, None)
        if logprobs:
            chunk["choices"][0]["logprobs"] = {"content": logprobs}
        return chunk

    def _chunk(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created if self.created is not None else int(time.time()),
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }


# --- completions ------------------------------------------------------------------------------


def text_completion(
    answer: dict[str, Any], *, completion_id: str, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A whole native `/api/generate` answer as `text_completion` (`openai.ToCompletion`)."""
    completion = {
        "id": completion_id,
        "object": "text_completion",
        "created": unix_time(answer.get("created_at")),
        "model": answer.get("model") or "",
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "text": answer.get("response") or "",
                "index": 0,
                "finish_reason": finish_reason(answer.get("done_reason"), False),
            }
        ],
        "usage": usage(answer),
    }
    return {**completion, **(extras or {})}


class CompletionStream:
    """One `/v1/completions` stream, as Ollama's `CompleteWriter` writes it: one chunk per
    native chunk (the final one included, carrying `finish_reason`); with `include_usage`,
    every chunk carries zeroed usage and a last chunk with `choices: []` carries the real one.

    Ollama stamps each completion chunk with the time it was written; Corral keeps the first
    chunk's time on all of them, as OpenAI and Ollama's own chat stream do."""

    def __init__(self, *, completion_id: str, model: str, include_usage: bool = False) -> None:
        self.completion_id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created: int | None = None
        self.finished = False

    def feed(
        self, native: dict[str, Any], extras: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        if self.finished or _is_queue_chunk(native):
            return []
        if self.created is None:
            self.created = unix_time(native.get("created_at"))
        done = native.get("done") is True
        text = native.get("response")
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "text_completion",
            "created": self.created,
            "choices": [
                {
                    "text": text if isinstance(text, str) else "",
                    "index": 0,
                    "finish_reason": finish_reason(native.get("done_reason"), False)
                    if done
                    else None,
                }
            ],
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if self.include_usage:
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if not done:
            return [chunk]
        self.finished = True
        chunks = [{**chunk, **(extras or {})}]
        if self.include_usage:
            chunks.append({**chunk, "choices": [], "usage": usage(native)})
        return chunks


# --- embeddings and models --------------------------------------------------------------------


def embedding_list(
    model: str, answer: dict[str, Any], *, base64_encoded: bool = False
) -> dict[str, Any]:
    """A native `/api/embed` answer as OpenAI's embedding list (`openai.ToEmbeddingList`);
    with `base64_encoded`, each vector is its little-endian float32 bytes in base64."""
    vectors = answer.get("embeddings")
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(vectors if isinstance(vectors, list) else []):
        embedding: Any = floats_to_base64(vector) if base64_encoded else vector
        data.append({"object": "embedding", "embedding": embedding, "index": index})
    prompt = _count(answer.get("prompt_eval_count"))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def floats_to_base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_object(model_id: str, modified_at: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": unix_time(modified_at),
        "owned_by": owner(model_id),
    }


def model_list(tags: dict[str, Any]) -> dict[str, Any]:
    """`/api/tags` as `/v1/models` (`openai.ToListCompletion`). With no models `data` is null,
    exactly as Ollama answers."""
    models = tags.get("models")
    data: list[dict[str, Any]] = []
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("model") or entry.get("name") or ""
        data.append(model_object(model_id, entry.get("modified_at")))
    return {"object": "list", "data": data or None}


def model_retrieved(model_id: str, show: dict[str, Any]) -> dict[str, Any]:
    """`/api/show` for `model_id` as `/v1/models/{model}` (`openai.ToModel`)."""
    return model_object(model_id, show.get("modified_at"))


def owner(model_id: str) -> str:
    """The namespace of a model name (`library` unless given), as Ollama's `model.ParseName`
    finds it: `[host/][namespace/]model[:tag]`."""
    name = model_id
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    if "/" not in name:
        return "library"
    rest = name[: name.rfind("/")]
    namespace = rest[rest.rfind("/") + 1 :]
    return namespace or "library"


# --- helpers ----------------------------------------------------------------------------------


def _is_queue_chunk(native: dict[str, Any]) -> bool:
    return "queue_info" in native and native.get("done") is not True


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _arguments_json(arguments: Any) -> str:
    """Arguments as compact JSON, keys in the backend's order (Go marshals the ordered map)."""
    return orjson.dumps(arguments if arguments is not None else {}).decode()
