"""A generation's answer (its text, thinking and tool calls), gathered from its chunks as they
are read.

`done` carries the whole answer, and a long stream's `done` waits for it: gathered only once the
stream had ended, a 5,000-token answer took 1.5 ms after the last token. Gathered a read at a
time, the work falls in the pauses between reads (a fast stream is read in spells:
backends/read_spells.py), and what is left at the end is one join.
"""

from __future__ import annotations

from corral_scheduler.backends.base import Chunk, Message, ToolCall


class Answer:
    def __init__(self) -> None:
        self._text: list[str] = []
        self._thinking: list[str] = []
        self.tool_calls: list[ToolCall] = []

    def take(self, chunks: list[Chunk]) -> None:
        """The answer's part of each chunk: `message` for chat, the chunk itself (with
        `response` as its content) for generate. Inline: thousands of chunks a stream."""
        text, thinking = self._text, self._thinking
        part: Message | Chunk
        content: str | None
        for chunk in chunks:
            message = chunk.get("message")
            if isinstance(message, dict):
                part, content = message, message.get("content")
            else:
                part, content = chunk, chunk.get("response")
            if content:
                text.append(str(content))
            if part.get("thinking"):
                thinking.append(str(part["thinking"]))
            if part.get("tool_calls"):
                self.tool_calls.extend(part["tool_calls"])

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking)
