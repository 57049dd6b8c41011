"""The `/v1` surface in process: its chunk shapes fed as the relay feeds them, its SSE encoder,
and its error renderer for every error type a handler or the shared path raises."""

from __future__ import annotations

from typing import Any

import orjson

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Done
from corral_gateway.encoders import Comment, Data, Frame
from corral_gateway.openai import openai_error
from corral_gateway.openai.chunk_shapes import ChatChunks, CompletionChunks, OpenAISseEncoder
from corral_gateway.openai.errors import invalid_request
from corral_gateway.openai.responses import ChatStream, CompletionStream
from corral_gateway.relay import JobFailed
from corral_gateway.validation import OllamaRequestError

T0 = "2023-11-14T22:13:20Z"


def done(final: dict[str, Any], text: str) -> Done:
    return Done.model_validate(
        {
            "request_id": "r1",
            "final": final,
            "text": text,
            "waited_ms": 5,
            "token_batches": 1,
            "model": "llama3.2",
        }
    )


def encode(frames: list[Frame]) -> bytes:
    encoder = OpenAISseEncoder()
    return b"".join(encoder.encode(frame) for frame in frames)


def chat_shape(include_usage: bool = False) -> ChatChunks:
    return ChatChunks(
        ChatStream(completion_id="chatcmpl-r1", model="llama3.2", include_usage=include_usage)
    )


def test_queue_feedback_is_a_comment() -> None:
    frame = chat_shape().queue(2, 3000)
    assert frame == Comment("queue position=2 estimated_wait_ms=3000")
    assert encode([frame]) == b": queue position=2 estimated_wait_ms=3000\n\n"


def test_chat_stream_as_the_relay_feeds_it() -> None:
    shape = chat_shape(include_usage=True)
    frames = [
        shape.queue(1, 100),
        *shape.chunk({"model": "llama3.2", "created_at": T0, "message": {"content": "Hi"}}),
        *shape.final(
            done(
                {"model": "llama3.2", "done": True, "done_reason": "stop", "eval_count": 1},
                "Hi",
            ),
            {"request_id": "r1"},
        ),
    ]
    body = encode(frames) + OpenAISseEncoder().end()
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0].startswith(b": queue")
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[1:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[1]["request_id"] == "r1"
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["completion_tokens"] == 1
    assert events[-1] == b"data: [DONE]"


def test_chat_whole_answer() -> None:
    shape = chat_shape()
    chunks = [
        {"model": "llama3.2", "created_at": T0, "message": {"content": "Hel", "thinking": "h"}},
        {"model": "llama3.2", "created_at": T0, "message": {"content": "lo"}},
    ]
    final = {"model": "llama3.2", "created_at": T0, "done": True, "done_reason": "stop"}
    answer = shape.whole(chunks, done(final, "Hello"), {"request_id": "r1"})
    assert answer["id"] == "chatcmpl-r1"
    assert answer["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "reasoning": "h",
    }
    assert answer["request_id"] == "r1"


def test_completion_shape() -> None:
    shape = CompletionChunks(CompletionStream(completion_id="cmpl-r1", model="m"))
    assert isinstance(shape.queue(0, 0), Comment)
    frames = shape.chunk({"model": "m", "response": "a", "done": False})
    frames += shape.final(done({"model": "m", "done": True, "done_reason": "stop"}, "a"), {})
    assert [f.obj["choices"][0]["finish_reason"] for f in frames if isinstance(f, Data)] == [
        None,
        "stop",
    ]
    whole = shape.whole([], done({"model": "m", "done_reason": "stop"}, "a"), {})
    assert whole["choices"][0]["text"] == "a" and whole["object"] == "text_completion"


def test_failure_after_the_stream_began_is_an_error_event() -> None:
    frames = chat_shape().failure(CorralError(ErrorType.INTERRUPTED, "interrupted; retry"))
    assert encode(frames) == (
        b'event: error\ndata: {"error":{"message":"interrupted; retry","type":"api_error",'
        b'"param":null,"code":"interrupted"}}\n\n'
    )


def render(error: Exception, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    response = openai_error(error, headers or {"X-Request-Id": "r1"})
    body = getattr(response, "body", b"")
    assert isinstance(body, bytes)
    return response.status, orjson.loads(body), response.headers


def test_renderer_for_openai_errors() -> None:
    status, body, headers = render(invalid_request("[] is too short - 'messages'"))
    assert status == 400
    assert body == {
        "error": {
            "message": "[] is too short - 'messages'",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert headers["X-Request-Id"] == "r1"
    assert headers["Content-Type"].startswith("application/json")


def test_renderer_for_the_shared_paths_errors() -> None:
    status, body, _ = render(OllamaRequestError(413, "request body too large"))
    assert (status, body["error"]["type"], body["error"]["code"]) == (413, "api_error", None)
    status, body, _ = render(OllamaRequestError(404, "model '' not found"))
    assert (status, body["error"]["type"]) == (404, "not_found_error")


def test_renderer_for_a_job_that_failed_before_the_first_byte() -> None:
    failed = JobFailed(
        ErrorType.QUEUE_TIMEOUT,
        "request timed out in the queue after 2.0 s",
        status=408,
        headers={"X-Request-Id": "r1", "X-Queue-Position": "3"},
    )
    status, body, headers = render(failed, {})
    assert status == 408
    assert body["error"]["code"] == "queue_timeout"
    assert headers["X-Queue-Position"] == "3"
    assert headers["Retry-After"] == "5"


def test_renderer_for_a_full_queue_keeps_corrals_retry_after() -> None:
    full = CorralError(ErrorType.QUEUE_FULL, "queue is full", headers={"Retry-After": "12"})
    status, body, headers = render(full)
    assert (status, body["error"]["code"], headers["Retry-After"]) == (503, "queue_full", "12")
