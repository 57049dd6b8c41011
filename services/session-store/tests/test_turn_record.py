"""From a `done` event to the turn that is stored; the per-session ordering primitive."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from corral_common.messages import Done
from corral_session_store.sessions import turn_record
from corral_session_store.turns import KeyedLocks

NOW = datetime(2025, 8, 5, 15, 0, tzinfo=UTC)


def event(**changes: object) -> Done:
    base: dict[str, object] = {
        "request_id": "r1",
        "token_batches": 2,
        "final": {
            "created_at": "2025-08-05T14:30:00.123456789Z",
            "message": {"role": "assistant", "content": "", "thinking": "hmm"},
            "done": True,
            "done_reason": "stop",
            "total_duration": 2_000_000_000,
            "prompt_eval_count": 12,
            "eval_count": 5,
            "eval_duration": True,  # not a number: dropped
        },
        "text": "Paris.",
        "thinking": "hmm",
        "waited_ms": 500,
        "model": "llama3.2",
        "session_id": "s1",
        "turn": [{"role": "user", "content": "Capital of France?", "unknown": "dropped"}],
        "owner": "key-1",
    }
    base.update(changes)
    return Done.model_validate(base)


def test_a_done_event_becomes_user_messages_then_the_answer() -> None:
    turn = turn_record(event(), NOW, raw_estimate=10.04)
    assert turn.request_id == "r1" and turn.session_id == "s1" and turn.owner == "key-1"
    assert turn.messages == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "thinking": "hmm"},
    ]
    assert turn.stats == {
        "total_duration": 2_000_000_000,
        "prompt_eval_count": 12,
        "eval_count": 5,
        "done_reason": "stop",
        "waited_ms": 500,
    }
    assert turn.answered_at == datetime(2025, 8, 5, 14, 30, 0, 123000, tzinfo=UTC)
    assert turn.asked_at == datetime(2025, 8, 5, 14, 29, 57, 623000, tzinfo=UTC)
    assert turn.estimate == {"raw_tokens": 10.0}


def test_times_fall_back_to_receipt_and_never_lie_in_the_future() -> None:
    no_time = turn_record(event(final={"done": True}), NOW)
    assert no_time.answered_at == NOW
    future = turn_record(event(final={"created_at": "2999-01-01T00:00:00Z"}), NOW)
    assert future.answered_at == NOW
    assert [m["role"] for m in turn_record(event(turn=None), NOW).messages] == ["assistant"]


def test_tool_calls_of_the_answer_are_kept() -> None:
    calls = [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    turn = turn_record(event(tool_calls=calls, thinking="", text=""), NOW)
    assert turn.messages[-1] == {"role": "assistant", "content": "", "tool_calls": calls}


def test_the_question_time_is_when_the_gateway_enqueued_it() -> None:
    enqueued = datetime(2025, 8, 5, 14, 29, 50, tzinfo=UTC)
    turn = turn_record(event(enqueued_at=enqueued.timestamp()), NOW)
    assert turn.asked_at == enqueued


async def test_keyed_locks_serve_one_key_in_call_order() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    gate = asyncio.Event()
    queued = {name: asyncio.Event() for name in ("a1", "a2", "b1", "a3")}

    async def work(key: str, name: str) -> None:
        # Set just before asking for the lock: the ask (and the wait in line, if any) happens
        # in the same step, so once all are set every task holds its place.
        queued[name].set()
        async with locks.hold(key):
            if name == "a1":
                await gate.wait()
            order.append(name)

    tasks = [
        asyncio.create_task(work(key, name))
        for key, name in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")]
    ]
    for event in queued.values():
        await event.wait()
    assert order == ["b1"]  # another key is not held up
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["b1", "a1", "a2", "a3"]
    assert len(locks) == 0
