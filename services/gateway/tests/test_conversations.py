"""Llama-chat's conversation surface in process: the `/api/chat` dispatch rule (both ways, and the
ambiguous bodies), llama-chat's error shape for every kind of error, the chat body's checks, the
answer and stream shapes, and a conversation message taken through the native path (the
ticket, the lane's events, the relay) with fake scheduler events and a fake session store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from corral_common.errors import CorralError, ErrorType
from corral_common.messages import Done, Event, Position, Started, Stored, Tokens
from corral_gateway import conversations, ollama
from corral_gateway.conversations import chat_routes, dispatch
from corral_gateway.conversations.chat_routes import (
    ConversationReplies,
    native_body,
    parse_message,
)
from corral_gateway.conversations.errors import conversation_error, error_body
from corral_gateway.conversations.meta_routes import public_url
from corral_gateway.encoders import Data
from corral_gateway.hub import Delivery
from corral_gateway.settings import GatewaySettings
from corral_gateway.state import GATEWAY, SETTINGS, Gateway
from corral_gateway.validation import OllamaRequestError
from services.gateway.tests.fakes import FakeGateway, FakeHub

RID = "req-conv-1"
MODEL = "llama3.2"

# -- the dispatch rule ---------------------------------------------------------------------

CONVERSATION_BODIES = [
    {"conversation_id": 1, "message": "hi", "model": MODEL},  # llama-chat's request
    {"conversation_id": 1, "message": "hi"},  # model from the conversation
    {"conversation_id": "7", "message": "hi"},  # a session id is a conversation id
    {"conversation_id": 1, "message": "hi", "messages": None},  # null is absent
    {"conversation_id": 1},  # refused in llama-chat's shape: message missing
    {"conversation_id": 1, "message": 5},  # refused in llama-chat's shape: not a string
    {"conversation_id": [1], "message": "hi"},  # refused in llama-chat's shape: a bad id
]
OLLAMA_BODIES = [
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    {"model": MODEL},  # Ollama's load idiom
    {"model": MODEL, "messages": []},  # also the load idiom
    # Ollama clients tagging their requests: `messages` makes a body Ollama's, even [].
    {"model": MODEL, "conversation_id": 1, "messages": [{"role": "user", "content": "x"}]},
    {"model": MODEL, "conversation_id": 1, "message": "hi", "messages": []},
    {"model": MODEL, "conversation_id": None, "message": "hi"},  # null is no id
    {"model": MODEL, "message": "hi"},  # no conversation id: Ollama's (a load)
    # The key's name in a message's text is not the key.
    {"model": MODEL, "messages": [{"role": "user", "content": '"conversation_id": 1'}]},
    [{"conversation_id": 1, "message": "hi"}],  # not an object: Ollama refuses it
]


@pytest.mark.parametrize("body", CONVERSATION_BODIES)
def test_a_conversation_body_is_a_conversation_message(body: Any) -> None:
    assert dispatch.is_conversation_chat(orjson.dumps(body))


@pytest.mark.parametrize("body", OLLAMA_BODIES)
def test_every_other_body_is_ollamas(body: Any) -> None:
    assert not dispatch.is_conversation_chat(orjson.dumps(body))


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b'{"conversation_id": 1, "message": "hi"', b'"conversation_id"', b"null"],
)
def test_what_is_not_json_is_ollamas_to_refuse(raw: bytes) -> None:
    assert not dispatch.is_conversation_chat(raw)


# -- llama-chat's error shape ---------------------------------------------------------------


def rendered(error: Exception) -> tuple[int, dict[str, Any], Any]:
    response = conversation_error(error, {"X-Request-Id": "r1"})
    body = getattr(response, "body", b"")
    assert isinstance(body, bytes)
    return response.status, orjson.loads(body), response.headers


def test_validation_errors_name_their_field() -> None:
    with pytest.raises(CorralError) as refused:
        parse_message({"conversation_id": 1})
    status, body, headers = rendered(refused.value)
    assert status == 400
    assert body == {
        "success": False,
        "error": "Missing required field: message",
        "code": "VALIDATION_ERROR",
        "details": {"field": "message", "type": "invalid_request"},
        "field": "message",
    }
    assert headers["X-Request-Id"] == "r1"
    # A params model's refusal names its field too.
    pydantic_style = CorralError(
        ErrorType.INVALID_REQUEST,
        "invalid title: must not be empty",
        details={"errors": [{"field": "title", "message": "must not be empty"}]},
    )
    assert rendered(pydantic_style)[1]["field"] == "title"


def test_a_missing_conversation_is_the_seeds_not_found() -> None:
    missing = CorralError(
        ErrorType.SESSION_NOT_FOUND,
        "Session '123' does not exist.",
        details={"session_id": "123"},
    )
    status, body, _ = rendered(missing)
    assert status == 404
    assert body["error"] == "Conversation not found"
    assert (body["code"], body["resource"], body["id"]) == ("NOT_FOUND", "conversation", 123)
    model = CorralError(
        ErrorType.MODEL_NOT_FOUND, "model 'x' not found", details={"requested_model": "x"}
    )
    assert rendered(model)[1] | {"details": None} == {
        "success": False,
        "error": "model 'x' not found",
        "code": "NOT_FOUND",
        "details": None,
        "resource": "model",
        "id": "x",
    }


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (CorralError(ErrorType.OLLAMA_CONNECTION_ERROR, "down"), 503, "BACKEND_ERROR"),
        (CorralError(ErrorType.BACKEND_TIMEOUT, "slow"), 504, "BACKEND_ERROR"),
        (CorralError(ErrorType.QUEUE_TIMEOUT, "waited", status=408), 408, "QUEUE_TIMEOUT"),
        (CorralError(ErrorType.UNAUTHORIZED, "no key"), 401, "UNAUTHORIZED"),
        (OllamaRequestError(413, "request body too large"), 413, "PAYLOAD_TOO_LARGE"),
        (OllamaRequestError(400, "invalid character"), 400, "VALIDATION_ERROR"),
    ],
)
def test_other_errors_keep_corrals_type_in_capitals(
    error: Exception, status: int, code: str
) -> None:
    got, body, _ = rendered(error)
    assert (got, body["code"], body["success"]) == (status, code, False)
    assert isinstance(body["error"], str) and body["error"]


def test_retry_after_is_in_the_body_and_the_header() -> None:
    limited = CorralError(ErrorType.RATE_LIMIT_EXCEEDED, "slow down", headers={"Retry-After": "12"})
    status, body, headers = rendered(limited)
    assert (status, body["retry_after"], headers["Retry-After"]) == (429, 12, "12")
    full = CorralError(ErrorType.QUEUE_FULL, "busy", details={"retry_after_s": 2.5})
    status, body, headers = rendered(full)
    assert (status, body["retry_after"], headers["Retry-After"]) == (503, 3, "3")
    assert "retry_after" not in rendered(CorralError(ErrorType.INVALID_REQUEST, "no"))[1]


# -- the chat body ---------------------------------------------------------------------------


def test_the_seeds_request_becomes_a_native_chat_in_the_conversations_session() -> None:
    asked = parse_message(
        {
            "conversation_id": 12,
            "message": "Explain machine learning",
            "model": MODEL,
            "options": {"temperature": 0.1},
            "priority": "batch",
            "unknown": "ignored",
        }
    )
    assert (asked.session_id, asked.stream, asked.model) == ("12", False, MODEL)
    assert native_body(asked, MODEL) == {
        "options": {"temperature": 0.1},
        "priority": "batch",
        "model": MODEL,
        "messages": [{"role": "user", "content": "Explain machine learning"}],
        "stream": False,
        "session_id": "12",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "hi"}, "conversation_id"),
        ({"conversation_id": -1, "message": "hi"}, "conversation_id"),
        ({"conversation_id": 1.5, "message": "hi"}, "conversation_id"),
        ({"conversation_id": True, "message": "hi"}, "conversation_id"),
        ({"conversation_id": "has.dot", "message": "hi"}, "conversation_id"),
        ({"conversation_id": 1, "message": "  "}, "message"),
        ({"conversation_id": 1, "message": ["hi"]}, "message"),
        ({"conversation_id": 1, "message": "hi", "model": 3}, "model"),
        ({"conversation_id": 1, "message": "hi", "stream": "yes"}, "stream"),
    ],
)
def test_a_bad_chat_body_is_refused_naming_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(CorralError) as refused:
        parse_message(body)
    assert error_body(refused.value)["field"] == field


def test_options_are_checked_as_ollama_checks_them() -> None:
    asked = parse_message({"conversation_id": 1, "message": "hi", "options": "hot"})
    with pytest.raises(OllamaRequestError) as refused:
        native_body(asked, MODEL)
    assert rendered(refused.value)[1]["code"] == "VALIDATION_ERROR"


def test_a_backend_url_is_shown_without_credentials() -> None:
    assert (
        public_url("http://user:secret@ollama:11434/base?token=x#f") == "http://ollama:11434/base"
    )
    assert public_url("http://[::1]:11434") == "http://[::1]:11434"
    assert public_url("not a url") is None


# -- the answer's shapes ---------------------------------------------------------------------

FINAL = {
    "model": MODEL,
    "created_at": "2025-06-08T10:30:45Z",
    "done": True,
    "done_reason": "stop",
    "total_duration": 1_250_400_000,
    "eval_count": 3,
    "eval_duration": 600_000_000,
    "prompt_eval_count": 20,
}
EXTRAS = {
    "request_id": RID,
    "session_id": "7",
    "queue_info": {"wait_time_ms": 40, "position": 1},
    "context_info": {"truncated": False, "messages_used": 3, "tokens_used": 20},
}
SEED_ANSWER = {
    "response",
    "model",
    "response_time_ms",
    "estimated_tokens",
    "metrics",
    "conversation_id",
    "request_id",
    "queue_info",
    "context_info",
}


def done_event(text: str = "Echo: hi", batches: int = 0) -> Done:
    return Done(
        request_id=RID,
        token_batches=batches,
        final=FINAL,
        text=text,
        waited_ms=40,
        model=MODEL,
        session_id="7",
    )


def test_the_whole_answer_is_the_seeds() -> None:
    answer = ConversationReplies(7, MODEL, 0.0).whole([], done_event(), EXTRAS)
    assert set(answer) == SEED_ANSWER
    assert answer["response"] == "Echo: hi"
    assert (answer["model"], answer["conversation_id"]) == (MODEL, 7)
    assert (answer["response_time_ms"], answer["estimated_tokens"]) == (1250, 3)
    assert answer["metrics"] == {
        "completion_tokens": 3,
        "prompt_tokens": 20,
        "total_tokens": 23,
        "tokens_per_second": 5.0,
    }
    assert answer["queue_info"] == EXTRAS["queue_info"]


def test_the_stream_as_the_relay_feeds_it() -> None:
    shape = ConversationReplies(7, MODEL, 0.0)
    frames = [
        shape.queue(2, 3000),
        *shape.chunk({"message": {"role": "assistant", "content": "Echo:"}}),
        *shape.chunk({"message": {"role": "assistant", "content": "", "thinking": "hm"}}),
        *shape.chunk({"message": {"role": "assistant", "content": " hi"}}),
        *shape.final(done_event(), EXTRAS),
    ]
    lines = [frame.obj for frame in frames if isinstance(frame, Data)]
    assert lines[0] == {
        "type": "queue",
        "conversation_id": 7,
        "queue_info": {"position": 2, "estimated_wait_ms": 3000},
        "done": False,
    }
    assert lines[1:3] == [
        {"type": "token", "token": "Echo:", "done": False},
        {"type": "token", "token": " hi", "done": False},
    ]
    assert lines[3]["type"] == "done" and lines[3]["done"] is True
    assert set(lines[3]) == SEED_ANSWER | {"type", "done"}
    failure = shape.failure(CorralError(ErrorType.INTERRUPTED, "interrupted; retry"))
    assert [frame.obj for frame in failure if isinstance(frame, Data)] == [
        {
            "type": "error",
            "done": True,
            "success": False,
            "error": "interrupted; retry",
            "code": "INTERRUPTED",
            "details": {"type": "interrupted"},
        }
    ]


# -- through the native path, in process -----------------------------------------------------


class FakeModels:
    names = [MODEL]

    async def check(self, model: str, *, not_found: str | None = None) -> None:
        if model not in self.names:
            raise CorralError(
                ErrorType.MODEL_NOT_FOUND,
                f"model '{model}' not found",
                details={"requested_model": model},
            )


class ObservedHub(FakeHub):
    """The fake hub, with the real hub's observers (the gateway's turns in flight are one)."""

    def __init__(self) -> None:
        super().__init__()
        self.observers: list[Callable[[Event], None]] = []

    def observe(self, observer: Callable[[Event], None]) -> None:
        self.observers.append(observer)


class ConversationGateway(FakeGateway):
    """The fake gateway, with the backend's models and a turn's `stored` waited for 1 s."""

    def __init__(self) -> None:
        super().__init__(GatewaySettings(heartbeat_s=5, stored_timeout_s=1))
        self.hub = ObservedHub()
        self.models = FakeModels()


async def describe_seven(params: Any) -> dict[str, Any]:
    if params.session_id != "7":
        raise CorralError(
            ErrorType.SESSION_NOT_FOUND,
            f"Session '{params.session_id}' does not exist.",
            details={"session_id": params.session_id},
        )
    return {"id": 7, "title": "t", "model": MODEL, "created_at": None, "updated_at": None}


async def assemble(params: Any) -> dict[str, Any]:
    history = [{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}]
    messages = [*history, *(m.model_dump(exclude_unset=True) for m in params.messages)]
    return {
        "messages": messages,
        "context_info": {
            "truncated": False,
            "messages_used": 3,
            "tokens_used": 0,
            "turns_dropped": 0,
        },
        "context_length": 4096,
    }


@pytest.fixture
async def fake(aiohttp_client: AiohttpClient) -> tuple[Any, ConversationGateway]:
    gateway = ConversationGateway()
    gateway.rpc.answers = {"conversation_describe": describe_seven, "assemble": assemble}
    app = web.Application()
    app[SETTINGS] = gateway.settings
    app[GATEWAY] = cast(Gateway, gateway)
    ollama.add_routes(app.router)
    conversations.add_routes(app.router)
    return await aiohttp_client(app), gateway


def lane_events(*texts: str) -> list[Delivery]:
    chunks = [{"model": MODEL, "message": {"role": "assistant", "content": t}} for t in texts]
    return [
        Position(request_id=RID, position=1, estimated_wait_ms=3000),
        Started(request_id=RID, waited_ms=40),
        Tokens(request_id=RID, seq=0, chunks=chunks),
        done_event("".join(texts), batches=1),
        Stored(request_id=RID, outcome="stored"),
    ]


async def test_a_message_goes_through_the_lane_into_the_conversations_session(
    fake: tuple[Any, ConversationGateway],
) -> None:
    client, gateway = fake
    gateway.hub.feed(RID, *lane_events("Echo:", " hi"))
    body = {"conversation_id": 7, "message": "hi", "model": MODEL, "request_id": RID}
    response = await client.post("/api/chat", json=body)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    answer = await response.json()
    assert set(answer) == SEED_ANSWER
    assert (answer["response"], answer["conversation_id"], answer["request_id"]) == (
        "Echo: hi",
        7,
        RID,
    )
    assert answer["queue_info"] == {"wait_time_ms": 40, "position": 1}
    assert response.headers["X-Session-Id"] == "7"
    # The lane got the native chat of session "7": the stored history, then the message.
    [job] = gateway.submitter.submitted
    assert (job.kind, job.session_id, job.model) == ("chat", "7", MODEL)
    assert job.turn == [{"role": "user", "content": "hi"}]
    assert job.payload["messages"][-1] == {"role": "user", "content": "hi"}
    assert len(job.payload["messages"]) == 3
    assert "stream" not in job.payload and "session_id" not in job.payload
    assert [name for name, _ in gateway.rpc.calls] == ["conversation_describe", "assemble"]


async def test_a_streamed_message_shows_its_place_in_the_queue(
    fake: tuple[Any, ConversationGateway],
) -> None:
    client, gateway = fake
    gateway.hub.feed(RID, *lane_events("Echo:", " hi"))
    body = {"conversation_id": "7", "message": "hi", "stream": True, "request_id": RID}
    response = await client.post("/api/chat", json=body)
    assert response.status == 200
    assert response.content_type == "application/x-ndjson"
    lines = [orjson.loads(line) for line in (await response.read()).splitlines()]
    assert [line["type"] for line in lines] == ["queue", "queue", "token", "token", "done"]
    assert [line["queue_info"]["position"] for line in lines[:2]] == [1, 0]
    assert "".join(line["token"] for line in lines if line["type"] == "token") == "Echo: hi"
    assert lines[-1]["response"] == "Echo: hi"
    assert lines[-1]["estimated_tokens"] == 3


async def test_another_users_or_a_missing_conversation_is_a_404_before_the_lane(
    fake: tuple[Any, ConversationGateway],
) -> None:
    client, gateway = fake
    response = await client.post("/api/chat", json={"conversation_id": 8, "message": "hi"})
    assert response.status == 404
    assert await response.json() == {
        "success": False,
        "error": "Conversation not found",
        "code": "NOT_FOUND",
        "details": {"session_id": "8", "type": "session_not_found"},
        "resource": "conversation",
        "id": 8,
    }
    assert gateway.submitter.submitted == []
    assert [name for name, _ in gateway.rpc.calls] == ["conversation_describe"]


async def test_a_model_the_backend_lacks_is_the_seeds_not_found(
    fake: tuple[Any, ConversationGateway],
) -> None:
    client, gateway = fake
    body = {"conversation_id": 7, "message": "hi", "model": "nope"}
    response = await client.post("/api/chat", json=body)
    assert response.status == 404
    answer = await response.json()
    assert (answer["code"], answer["resource"], answer["id"]) == ("NOT_FOUND", "model", "nope")
    assert gateway.submitter.submitted == []


async def test_ollamas_chat_is_answered_as_before(fake: tuple[Any, ConversationGateway]) -> None:
    client, gateway = fake
    gateway.hub.feed(RID, *lane_events("Echo:", " hi")[1:4])
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "conversation_id": 7,  # a client's own tag: `messages` makes the body Ollama's
    }
    response = await client.post("/api/chat", json=body, headers={"X-Request-Id": RID})
    assert response.status == 200
    answer = await response.json()
    assert answer["message"] == {"role": "assistant", "content": "Echo: hi"}
    assert answer["done"] is True and "response" not in answer
    [job] = gateway.submitter.submitted
    assert job.session_id is None and job.payload["messages"] == body["messages"]
    # Ollama's errors stay Ollama's.
    response = await client.post("/api/chat", data=b"{not json")
    assert response.status == 400
    assert set(await response.json()) == {"error"}
    response = await client.post("/api/chat", json={"messages": []})
    assert (response.status, await response.json()) == (400, {"error": "model is required"})


async def test_ollamas_load_idiom_is_untouched(fake: tuple[Any, ConversationGateway]) -> None:
    client, gateway = fake
    gateway.hub.feed(RID, Started(request_id=RID, waited_ms=0), done_event("", batches=0))
    body = {"model": MODEL, "messages": [], "conversation_id": 7}
    response = await client.post("/api/chat", json=body, headers={"X-Request-Id": RID})
    assert response.status == 200
    assert (await response.json())["message"] == {"role": "assistant", "content": ""}
    [job] = gateway.submitter.submitted
    assert job.payload["messages"] == [] and job.session_id is None


async def test_a_conversation_body_without_a_message_is_refused_not_loaded(
    fake: tuple[Any, ConversationGateway],
) -> None:
    client, gateway = fake
    response = await client.post("/api/chat", json={"conversation_id": 7, "model": MODEL})
    assert response.status == 400
    answer = await response.json()
    assert (answer["code"], answer["field"]) == ("VALIDATION_ERROR", "message")
    assert gateway.submitter.submitted == []


async def test_the_dispatcher_reads_the_body_once_for_both(
    fake: tuple[Any, ConversationGateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = fake
    seen: list[bytes] = []

    async def conversation_chat(request: web.Request) -> web.StreamResponse:
        seen.append(await request.read())
        raise CorralError(ErrorType.QUEUE_FULL, "busy", headers={"Retry-After": "4"})

    monkeypatch.setattr(chat_routes, "chat", conversation_chat)
    raw = orjson.dumps({"conversation_id": 1, "message": "hi"})
    response = await client.post("/api/chat", data=raw)
    assert seen == [raw]
    assert response.status == 503
    assert response.headers["Retry-After"] == "4"
    answer = await response.json()
    assert (answer["code"], answer["retry_after"]) == ("QUEUE_FULL", 4)
