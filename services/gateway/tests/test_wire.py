"""Shapes the gateway writes, and putting token batches back in order."""

from __future__ import annotations

import re
from typing import Any

from corral_gateway.context_check import prompt_tokens
from corral_gateway.ollama.chunks import assemble, corral_fields, created_at, queue_chunk
from corral_gateway.ordering import TokenOrder


def test_created_at_is_rfc3339_utc() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created_at())


def test_chat_queue_chunk_is_an_empty_delta() -> None:
    chunk = queue_chunk("chat", "llama3.2", 2, 3000)
    assert chunk["message"] == {"role": "assistant", "content": ""}
    assert chunk["queue_info"] == {"position": 2, "estimated_wait_ms": 3000}
    assert chunk["done"] is False
    assert chunk["model"] == "llama3.2"


def test_generate_queue_chunk_has_an_empty_response() -> None:
    chunk = queue_chunk("generate", "m", 0, 0)
    assert chunk["response"] == "" and "message" not in chunk


def test_corral_fields() -> None:
    fields = corral_fields(
        request_id="r1",
        session_id=None,
        waited_ms=12,
        first_position=3,
        messages_used=2,
        final={"prompt_eval_count": 40},
    )
    assert fields == {
        "request_id": "r1",
        "queue_info": {"wait_time_ms": 12, "position": 3},
        "context_info": {"truncated": False, "messages_used": 2, "tokens_used": 40},
    }
    with_session = corral_fields(
        request_id="r", session_id="s", waited_ms=0, first_position=0, messages_used=1, final={}
    )
    assert with_session["session_id"] == "s"


def test_a_prompt_the_backend_did_not_count_is_estimated_and_said_to_be() -> None:
    def fields(final: dict[str, Any], context_info: dict[str, Any] | None = None) -> Any:
        return corral_fields(
            request_id="r",
            session_id=None,
            waited_ms=0,
            first_position=0,
            messages_used=1,
            final=final,
            context_info=context_info,
            estimate=lambda: 17,
        )["context_info"]

    # The backend's count wins, and is not an estimate.
    assert fields({"prompt_eval_count": 40}) == {
        "truncated": False,
        "messages_used": 1,
        "tokens_used": 40,
    }
    # No count (llama-cpp-python's streams): the gateway's estimate, not a 0.
    assert fields({}) == {
        "truncated": False,
        "messages_used": 1,
        "tokens_used": 17,
        "estimated": True,
    }
    # A session's: the store's estimate stands, said to be one.
    assembled = {"truncated": False, "messages_used": 5, "tokens_used": 90}
    assert fields({}, assembled) == {**assembled, "estimated": True}
    # Nothing to estimate (a load request): 0, as before.
    assert corral_fields(
        request_id="r", session_id=None, waited_ms=0, first_position=0, messages_used=0, final={}
    )["context_info"] == {"truncated": False, "messages_used": 0, "tokens_used": 0}


def test_prompt_tokens_estimates_chats_and_generates() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}]}
    generate = {"prompt": "x" * 400}
    assert prompt_tokens("chat", chat) > 100 and prompt_tokens("generate", generate) > 100
    assert prompt_tokens("chat", {"messages": "not a list"}) == prompt_tokens("chat", {})


def test_assemble_chat_gathers_thinking_and_tool_calls() -> None:
    call = {"function": {"name": "f", "arguments": {}}}
    chunks: list[dict[str, Any]] = [
        {"message": {"role": "assistant", "content": "", "thinking": "hm"}},
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]}},
    ]
    final = {
        "model": "m",
        "done": True,
        "done_reason": "stop",
        "eval_count": 3,
        "message": {"role": "assistant", "content": ""},
    }
    body = assemble("chat", chunks, final, "Hello")
    assert body["message"] == {
        "role": "assistant",
        "content": "Hello",
        "thinking": "hm",
        "tool_calls": [call],
    }
    assert body["eval_count"] == 3 and body["done"] is True


def test_assemble_generate_keeps_context() -> None:
    final = {"done": True, "response": "", "context": [1, 2]}
    body = assemble("generate", [{"response": "a"}], final, "ab")
    assert body["response"] == "ab" and body["context"] == [1, 2]


def test_token_order_releases_in_sequence() -> None:
    order = TokenOrder()
    assert order.push(1, [{"n": 1}]) == []
    assert order.push(0, [{"n": 0}]) == [{"n": 0}, {"n": 1}]
    assert order.received == 2
    assert order.push(0, [{"n": 0}]) == []  # duplicate
    assert order.push(2, [{"n": 2}, {"n": 3}]) == [{"n": 2}, {"n": 3}]
