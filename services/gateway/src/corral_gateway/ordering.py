"""Puts token batches back in order. Tokens travel on a channel without confirms, separate from
the final event, so batches can arrive after `done` and, after a reconnect, out of order."""

from __future__ import annotations

from typing import Any


class TokenOrder:
    def __init__(self) -> None:
        self._next = 0
        self._early: dict[int, list[dict[str, Any]]] = {}

    @property
    def received(self) -> int:
        """How many batches, counted from the first, have been released in order."""
        return self._next

    def push(self, seq: int, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Returns the chunks that can now be released, in order (possibly none)."""
        if seq < self._next:
            return []  # a duplicate
        self._early[seq] = chunks
        ready: list[dict[str, Any]] = []
        while self._next in self._early:
            ready.extend(self._early.pop(self._next))
            self._next += 1
        return ready
