"""The relay's `ChunkShape`s for `/v1` (OpenAI's chunks over SSE) and the SSE encoder that
writes them, with a failure after the first byte as an SSE `error` event.

The relay (relay.py) decides what a client is told and when; these only translate: queue
feedback becomes a comment line, each native chunk goes through the stream's `ChatStream` or
`CompletionStream` (responses.py), the final native chunk gives the finish and usage chunks, and
a non-streaming answer is assembled as Ollama assembles it, then translated whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Self

from corral_common.errors import CorralError
from corral_common.messages import Done, JobKind, Tokens
from corral_gateway.encoders import Comment, Data, Frame, StreamEncoder
from corral_gateway.ollama.chunks import assemble
from corral_gateway.openai import sse
from corral_gateway.openai.errors import OpenAIError, from_corral, sse_error_event
from corral_gateway.openai.responses import (
    ChatStream,
    CompletionStream,
    chat_completion,
    completion_id,
    text_completion,
)


class OpenAISseEncoder:
    """SSE as Ollama's `/v1` writes it: `data:` events and a closing `data: [DONE]`, plus comment
    lines (queue feedback, heartbeats) and an `error` event for a failure after the stream
    began."""

    content_type = sse.CONTENT_TYPE

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Comment):
            return sse.comment(frame.text)
        if isinstance(frame.obj, OpenAIError):
            return sse_error_event(frame.obj)
        return sse.data_event(frame.obj)

    def end(self) -> bytes:
        return sse.DONE

    def heartbeat(self) -> bytes:
        return sse.heartbeat()


class _OpenAIChunks:
    """What the two `/v1` generation shapes do alike; a subclass names the native kind its
    whole answer is assembled as and the OpenAI object that answer becomes."""

    native_kind: ClassVar[JobKind]
    translate: ClassVar[Callable[..., dict[str, Any]]]
    stream_type: ClassVar[type[ChatStream] | type[CompletionStream]]
    # OpenAI's prefix for the completion's id: `chatcmpl-…` or `cmpl-…`.
    id_prefix: ClassVar[str]

    def __init__(self, stream: ChatStream | CompletionStream) -> None:
        self.stream = stream

    @classmethod
    def for_request(cls, request_id: str, model: str, *, include_usage: bool) -> Self:
        """The shape for one request, its completion id derived from the request id."""
        stream = cls.stream_type(
            completion_id=completion_id(cls.id_prefix, request_id),
            model=model,
            include_usage=include_usage,
        )
        return cls(stream)

    def queue(self, position: int, wait_ms: int) -> Frame:
        return Comment(sse.queue_text(position, wait_ms))

    def chunk(self, chunk: dict[str, Any]) -> list[Frame]:
        return [Data(item) for item in self.stream.feed(chunk)]

    def passthrough(self, tokens: Tokens, encoder: StreamEncoder) -> bytes | None:
        return None  # every chunk is translated

    def final(self, done: Done, extras: dict[str, Any]) -> list[Frame]:
        return [Data(item) for item in self.stream.feed(done.final, extras)]

    def failure(self, error: CorralError) -> list[Frame]:
        return [Data(from_corral(error))]

    def whole(self, chunks: list[dict[str, Any]], done: Done, extras: dict[str, Any]) -> Any:
        answer = assemble(self.native_kind, chunks, done.final, done.text)
        answer.setdefault("model", self.stream.model)
        return self.translate(answer, completion_id=self.stream.completion_id, extras=extras)


class ChatChunks(_OpenAIChunks):
    """`/v1/chat/completions`: `chat.completion.chunk`s, or one `chat.completion`."""

    native_kind = "chat"
    translate = staticmethod(chat_completion)
    stream_type = ChatStream
    id_prefix = "chatcmpl"


class CompletionChunks(_OpenAIChunks):
    """`/v1/completions`: `text_completion` chunks, or one `text_completion`."""

    native_kind = "generate"
    translate = staticmethod(text_completion)
    stream_type = CompletionStream
    id_prefix = "cmpl"
