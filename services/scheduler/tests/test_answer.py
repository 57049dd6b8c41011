"""A generation's answer gathered a read at a time: chat chunks by their `message`, generate
chunks by their `response`, thinking and tool calls alike, whatever the reads' sizes."""

from __future__ import annotations

from typing import Any, cast

from corral_scheduler.answer import Answer
from corral_scheduler.backends.base import Chunk


def chunk(**fields: Any) -> Chunk:
    return cast(Chunk, fields)


def chat(content: str, **more: Any) -> Chunk:
    return chunk(message={"role": "assistant", "content": content, **more}, done=False)


def test_chat_chunks_make_text_thinking_and_tool_calls_in_order() -> None:
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    answer = Answer()
    answer.take([chat("", thinking="hm, "), chat("", thinking="yes")])
    answer.take([chat("Hel"), chat("lo")])
    answer.take([chat("!", tool_calls=[call])])
    answer.take([chunk(message={"role": "assistant", "content": ""}, done=True)])
    assert (answer.text, answer.thinking, answer.tool_calls) == ("Hello!", "hm, yes", [call])


def test_generate_chunks_make_the_text_of_their_responses() -> None:
    answer = Answer()
    answer.take([chunk(response="Hel", done=False), chunk(response="lo", done=False)])
    answer.take([chunk(response="", done=True, thinking="x")])
    assert (answer.text, answer.thinking, answer.tool_calls) == ("Hello", "x", [])


def test_nothing_taken_is_an_empty_answer() -> None:
    answer = Answer()
    answer.take([])
    assert (answer.text, answer.thinking, answer.tool_calls) == ("", "", [])
