"""POST /api/chat with llama-chat's conversation body: `{"conversation_id", "message", "model"}`.

The message enters the native path unchanged (ollama.chat_routes.serve_generation: the
caller's token quota, the serial lane, fair share, priorities, queue timeouts, cancellation
when the client leaves, the session store's context assembly, the turn stored once), as the
native chat `{"model", "messages": [{"role": "user", "content": message}], "session_id": "N"}`
of conversation N's session; only the answer is shown differently:

- not streamed (llama-chat's default): one object, llama-chat's `{response, model,
  response_time_ms, estimated_tokens, metrics {completion_tokens, prompt_tokens,
  total_tokens, tokens_per_second}}` plus Corral's `conversation_id`, `request_id`,
  `queue_info {wait_time_ms, position}` and `context_info`;
- `"stream": true`: NDJSON lines (SSE events with `Accept: text/event-stream`), each with a
  `type`: `queue` (`queue_info {position, estimated_wait_ms}`, while the request waits),
  `token` (`token`: the next piece of text), then one `done` line carrying the whole answer
  object above (`response` is the full text) or one `error` line in llama-chat's error shape.

`response_time_ms` is the backend's own `total_duration` (loading, prompt and generation; the
wait in Corral's queue is `queue_info.wait_time_ms`), the same figure the conversation's
messages, stats and search show for the answer. `estimated_tokens` is the backend's
`eval_count` (llama-chat estimated it; Corral has the count).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.contracts.conversations import (
    CONVERSATIONS,
    ConversationId,
    ConversationParams,
    conversation_id_of,
)
from corral_common.errors import CorralError
from corral_common.ids import is_valid_client_id
from corral_common.messages import Done, JobKind, Tokens
from corral_gateway.body import read_body
from corral_gateway.conversations.errors import error_body, missing_field, validation_error
from corral_gateway.encoders import Data, Frame, NdjsonEncoder, SseEncoder, StreamEncoder
from corral_gateway.extensions import Extensions
from corral_gateway.identity.principal import caller_of
from corral_gateway.ollama.chat_routes import Present, serve_generation
from corral_gateway.relay import ChunkShape
from corral_gateway.state import GATEWAY, Gateway
from corral_gateway.validation import decode_body

# The body fields that go on to the native request as they are (checked there as Ollama checks
# them): generation options, and Corral's request id, priority and metadata.
PASSED_ON = ("options", "keep_alive", "format", "think", "request_id", "priority", "metadata")
# Ids llama-chat's clients send as JSON integers: non-negative, and within what JSON parsers
# (orjson included) read as a 64-bit integer.
MAX_CONVERSATION_NUMBER = 2**63 - 1
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ConversationMessage:
    """A conversation chat body, checked."""

    session_id: str
    message: str
    model: str | None
    stream: bool
    passed_on: dict[str, Any]


def session_of(value: Any) -> str:
    """The session a body's `conversation_id` names: N for the integer N (llama-chat's ids), or a
    string that is a session id as it is (`"42"` is conversation 42 too)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_CONVERSATION_NUMBER:
            raise validation_error("conversation_id", "conversation_id must not be negative")
        return str(value)
    if isinstance(value, str) and is_valid_client_id(value):
        return value
    raise validation_error(
        "conversation_id",
        "conversation_id must be an integer (or the id of a session, as a string)",
    )


def parse_message(body: Any) -> ConversationMessage:
    """Llama-chat's chat request: `conversation_id` and `message` required, `model` optional (the
    conversation's own), `stream` false unless asked; refusals name their field."""
    if not isinstance(body, dict):
        raise validation_error("body", "the body must be a JSON object")
    if body.get("conversation_id") is None:
        raise missing_field("conversation_id")
    session_id = session_of(body["conversation_id"])
    message = body.get("message")
    if message is None:
        raise missing_field("message")
    if not isinstance(message, str):
        raise validation_error("message", "message must be a string")
    if not message.strip():
        raise validation_error("message", "message must not be empty")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise validation_error("model", "model must be a string")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise validation_error("stream", "stream must be true or false")
    return ConversationMessage(
        session_id=session_id,
        message=message,
        model=model or None,
        stream=bool(stream),
        passed_on={k: body[k] for k in PASSED_ON if body.get(k) is not None},
    )


def native_body(asked: ConversationMessage, model: str) -> dict[str, Any]:
    """The native chat request for the message, checked as Ollama's handler checks one (an
    option of the wrong type is refused here, in Ollama's words, naming the field)."""
    body: dict[str, Any] = {
        **asked.passed_on,
        "model": model,
        "messages": [{"role": "user", "content": asked.message}],
        "stream": asked.stream,
        "session_id": asked.session_id,
    }
    return decode_body(jsonutil.dumps(body), "chat")


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ConversationReplies:
    """The relay's `ChunkShape` for conversation answers (see the module doc)."""

    def __init__(self, conversation_id: ConversationId, model: str, arrived: float) -> None:
        self.conversation_id = conversation_id
        self.model = model
        self.arrived = arrived

    def queue(self, position: int, wait_ms: int) -> Frame:
        return Data(
            {
                "type": "queue",
                "conversation_id": self.conversation_id,
                "queue_info": {"position": position, "estimated_wait_ms": wait_ms},
                "done": False,
            }
        )

    def chunk(self, chunk: dict[str, Any]) -> list[Frame]:
        message = chunk.get("message")
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str) or not text:
            return []  # nothing llama-chat's clients show (a thinking-only piece)
        return [Data({"type": "token", "token": text, "done": False})]

    def passthrough(self, tokens: Tokens, encoder: StreamEncoder) -> bytes | None:
        return None  # llama-chat's frames are not the backend's chunks

    def final(self, done: Done, extras: dict[str, Any]) -> list[Frame]:
        return [Data({"type": "done", "done": True, **self.whole([], done, extras)})]

    def failure(self, error: CorralError) -> list[Frame]:
        return [Data({"type": "error", "done": True, **error_body(error)})]

    def whole(self, chunks: list[dict[str, Any]], done: Done, extras: dict[str, Any]) -> Any:
        """Llama-chat's answer, from the final event (which has the whole text)."""
        final = done.final
        total_ns = _int(final.get("total_duration"))
        if total_ns is not None:
            response_time_ms = round(total_ns / 1e6)
        else:  # a backend that does not time itself: the time since arrival, less the wait
            elapsed_ms = round((time.monotonic() - self.arrived) * 1000)
            response_time_ms = max(elapsed_ms - done.waited_ms, 0)
        eval_count = _int(final.get("eval_count"))
        completion = eval_count if eval_count is not None else estimate_tokens(done.text)
        prompt = _int(final.get("prompt_eval_count")) or 0
        eval_ns = _int(final.get("eval_duration"))
        if eval_count and eval_ns:
            per_second = round(eval_count / (eval_ns / 1e9), 1)
        elif response_time_ms > 0:
            per_second = round(completion / (response_time_ms / 1000), 1)
        else:
            per_second = 0.0
        model = final.get("model")
        return {
            "response": done.text,
            "model": model if isinstance(model, str) and model else self.model,
            "response_time_ms": response_time_ms,
            "estimated_tokens": completion,
            "metrics": {
                "completion_tokens": completion,
                "prompt_tokens": prompt,
                "total_tokens": prompt + completion,
                "tokens_per_second": per_second,
            },
            "conversation_id": self.conversation_id,
            "request_id": extras.get("request_id"),
            "queue_info": extras.get("queue_info"),
            "context_info": extras.get("context_info"),
        }


def encoder_for(request: web.Request) -> StreamEncoder:
    """SSE for a client that asks for it, NDJSON (Ollama's streams) otherwise."""
    if "text/event-stream" in request.headers.get("Accept", ""):
        return SseEncoder()
    return NdjsonEncoder()


def _json(raw: bytes) -> Any:
    if not raw.strip():
        raise validation_error("body", "missing request body")
    try:
        return jsonutil.loads_bounded(raw)
    except jsonutil.TooDeep as exc:
        raise validation_error("body", str(exc)) from exc
    except jsonutil.JSONDecodeError as exc:
        raise validation_error("body", "the body must be JSON") from exc


async def chat(request: web.Request) -> web.StreamResponse:
    """Send a message to a conversation and get the model's answer (llama-chat's API)."""
    gateway = request.app[GATEWAY]
    arrived = time.monotonic()
    asked = parse_message(_json(await read_body(request, gateway.settings.max_body_bytes)))
    # The conversation must exist and be the caller's (another's is a 404, as a missing one);
    # a chat never creates one (POST /api/conversations does).
    await gateway.turns.settled(asked.session_id)
    described = await gateway.rpc.call(
        CONVERSATIONS.describe,
        ConversationParams(session_id=asked.session_id, owner=caller_of(request).owner),
    )
    model = asked.model or described.model
    if not model:
        raise missing_field("model")
    body = native_body(asked, model)
    shown_id = conversation_id_of(asked.session_id)
    encoder = encoder_for(request)

    async def decode(
        request: web.Request, gateway: Gateway, kind: JobKind
    ) -> tuple[dict[str, Any], Present]:
        def present(model: str, ext: Extensions) -> tuple[ChunkShape, StreamEncoder]:
            return ConversationReplies(shown_id, model, arrived), encoder

        return body, present

    return await serve_generation(request, "chat", decode)
