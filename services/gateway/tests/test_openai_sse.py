"""The `/v1` SSE framing and error shapes, read back by the `openai` SDK itself: its client is
pointed at an in-memory transport that answers with the bytes Corral's modules produce, so the
SDK's own SSE decoder, stream loop and error mapping judge them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from corral_common.errors import CorralError, ErrorType
from corral_gateway.openai import sse
from corral_gateway.openai.errors import (
    OpenAIError,
    error_type_for_status,
    from_corral,
    from_failure,
    invalid_request,
    sse_error_event,
)
from corral_gateway.openai.responses import ChatStream, CompletionStream

Handler = Callable[[httpx2.Request], httpx2.Response]


def client(handler: Handler) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="unused",
        base_url="http://corral.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def async_client(handler: Handler) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused",
        base_url="http://corral.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )


def event_stream(frames: list[bytes], piece: int = 7) -> Handler:
    """An SSE answer delivered in small pieces, so frames are split at arbitrary bytes."""
    body = b"".join(frames)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"Content-Type": sse.CONTENT_TYPE}, content=b"".join(pieces())
        )

    return handler


def native(content: str = "", *, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "created_at": "2023-11-14T22:13:20Z",
        "message": {"role": "assistant", "content": content, **extra.pop("message", {})},
        "done": done,
        **extra,
    }


def chat_frames(include_usage: bool = False) -> list[bytes]:
    """A whole answer as the surface writes it: queue comments while waiting, a heartbeat,
    the chunks, and [DONE]."""
    stream = ChatStream(completion_id="chatcmpl-r1", model="m", include_usage=include_usage)
    frames = [sse.queue_comment(2, 3000), sse.heartbeat(), sse.queue_comment(0, 0)]
    calls = [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]
    for item in (
        native("Hel", message={"thinking": "hmm"}),
        native("lo"),
        native(message={"tool_calls": calls}),
        native(done=True, done_reason="stop", prompt_eval_count=4, eval_count=3),
    ):
        frames.extend(sse.data_event(chunk) for chunk in stream.feed(item))
    frames.append(sse.DONE)
    return frames


# --- framing -----------------------------------------------------------------------------------


def test_frames() -> None:
    assert sse.data_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.queue_comment(2, 3000) == b": queue position=2 estimated_wait_ms=3000\n\n"
    assert sse.queue_text(0, 0) == "queue position=0 estimated_wait_ms=0"
    assert sse.heartbeat() == b": heartbeat\n\n"
    assert sse.comment("two\nlines") == b": two lines\n\n"


def test_sdk_reads_a_whole_stream_and_ignores_comments() -> None:
    with client(event_stream(chat_frames(include_usage=True))) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    # reasoning, content, content, tool call, finish, usage: no chunk from the comments.
    assert len(chunks) == 6
    assert {c.id for c in chunks} == {"chatcmpl-r1"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.model_extra == {"reasoning": "hmm"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    tool_calls = chunks[3].choices[0].delta.tool_calls
    assert tool_calls is not None and tool_calls[0].function is not None
    assert (tool_calls[0].index, tool_calls[0].function.name) == (0, "get_weather")
    assert tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert tool_calls[0].id is not None and tool_calls[0].id.startswith("call_")
    # finish_reason appears once, on the finish chunk: never on a queue update.
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons == [None, None, None, None, "tool_calls"]
    assert chunks[5].choices == [] and chunks[5].usage is not None
    assert chunks[5].usage.total_tokens == 7


async def test_async_sdk_reads_the_same_stream() -> None:
    async with async_client(event_stream(chat_frames())) as sdk:
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"


def test_sdk_reads_a_completion_stream() -> None:
    stream = CompletionStream(completion_id="cmpl-r1", model="m", include_usage=True)
    frames = [sse.queue_comment(1, 10)]
    for item in (
        {"model": "m", "response": "a", "done": False},
        {"model": "m", "response": "b", "done": True, "done_reason": "stop", "eval_count": 2},
    ):
        frames.extend(sse.data_event(chunk) for chunk in stream.feed(item))
    frames.append(sse.DONE)
    with client(event_stream(frames)) as sdk:
        chunks = list(
            sdk.completions.create(
                model="m", prompt="x", stream=True, stream_options={"include_usage": True}
            )
        )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "ab"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_error_after_the_stream_started_raises_in_the_sdk() -> None:
    frames = chat_frames()[:5]  # comments and the first chunks, then the failure
    failure = from_failure(500, "generation was interrupted; please retry", "interrupted")
    frames.append(sse_error_event(failure))
    with client(event_stream(frames)) as sdk:
        stream = sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        received: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            received.extend(stream)
    assert len(received) == 2
    assert caught.value.message == "generation was interrupted; please retry"
    assert caught.value.body == {
        "message": "generation was interrupted; please retry",
        "type": "api_error",
        "param": None,
        "code": "interrupted",
    }


def test_error_event_frame() -> None:
    frame = sse_error_event(invalid_request("bad"))
    assert frame == (
        b'event: error\ndata: {"error":{"message":"bad","type":"invalid_request_error",'
        b'"param":null,"code":null}}\n\n'
    )


# --- errors before anything was written ---------------------------------------------------------


def answer_error(error: OpenAIError) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(error.status, json=error.body(), headers=error.headers)

    return handler


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
def test_error_type_follows_ollama(status: int, expected: str) -> None:
    assert error_type_for_status(status) == expected
    assert OpenAIError(status, "test message").body() == {
        "error": {"message": "test message", "type": expected, "param": None, "code": None}
    }


@pytest.mark.parametrize(
    ("error_type", "status", "code", "retry_after"),
    [
        (ErrorType.MODEL_NOT_FOUND, 404, "model_not_found", None),
        (ErrorType.SESSION_NOT_FOUND, 404, "session_not_found", None),
        (ErrorType.INVALID_REQUEST, 400, None, None),
        (ErrorType.CONTEXT_LIMIT_EXCEEDED, 400, "context_length_exceeded", None),
        (ErrorType.QUEUE_FULL, 503, "queue_full", "7"),
        (ErrorType.BROKER_UNAVAILABLE, 503, "broker_unavailable", "7"),
        (ErrorType.OLLAMA_CONNECTION_ERROR, 503, "ollama_connection_error", "7"),
        (ErrorType.QUEUE_TIMEOUT, 408, "queue_timeout", "7"),
        (ErrorType.RATE_LIMIT_EXCEEDED, 429, "rate_limit_exceeded", "7"),
        (ErrorType.BACKEND_TIMEOUT, 504, "backend_timeout", None),
        (ErrorType.MODEL_BUSY, 409, "model_busy", None),
        (ErrorType.INTERNAL_ERROR, 500, "internal_error", None),
    ],
)
def test_corral_errors(
    error_type: ErrorType, status: int, code: str | None, retry_after: str | None
) -> None:
    error = from_corral(CorralError(error_type, "it failed", headers={"Retry-After": "7"}))
    assert (error.status, error.code, error.message) == (status, code, "it failed")
    assert error.headers.get("Retry-After") == retry_after


def test_retry_after_from_details_or_a_default() -> None:
    from_details = from_corral(
        CorralError(ErrorType.QUEUE_FULL, "busy", details={"retry_after_s": 12})
    )
    assert from_details.headers == {"Retry-After": "12"}
    assert from_failure(503, "busy").headers == {"Retry-After": "5"}


def test_unknown_error_type_keeps_its_status_without_a_code() -> None:
    error = from_failure(502, "odd", "something_new")
    assert (error.status, error.code, error.type) == (502, None, "api_error")


def test_sdk_raises_not_found_with_the_code() -> None:
    missing = from_corral(CorralError(ErrorType.MODEL_NOT_FOUND, "model 'nope' not found"))
    with client(answer_error(missing)) as sdk, pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert caught.value.type == "not_found_error"
    assert caught.value.message.endswith("model 'nope' not found")


def test_sdk_raises_bad_request_for_a_context_that_does_not_fit() -> None:
    too_big = from_corral(CorralError(ErrorType.CONTEXT_LIMIT_EXCEEDED, "too long"))
    with client(answer_error(too_big)) as sdk, pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "context_length_exceeded"


def test_sdk_sees_a_full_queue_as_retryable() -> None:
    full = from_corral(CorralError(ErrorType.QUEUE_FULL, "queue is full", headers={}))
    with client(answer_error(full)) as sdk, pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "5"
