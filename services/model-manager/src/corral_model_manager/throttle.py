"""Thinning a pull's status lines to what a watcher needs.

Ollama reports a layer's download many times a second (`{"status": "pulling <digest>",
"total", "completed"}`); a client needs a few updates a second. Byte-progress lines of the same
status are conflated to at most one per interval, but a status change always goes out, and the
newest held line of a status always goes out before the next status, so every watcher sees each
layer reach `completed == total`. Nothing is ever reordered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Step:
    """One backend line and its position in the backend's stream."""

    index: int
    line: dict[str, Any]

    @property
    def status(self) -> Any:
        return self.line.get("status")

    @property
    def key(self) -> tuple[Any, Any]:
        """What a line's progress is of: its status on its pool server (a pool's pull runs
        the same statuses on each server in turn, and each server's layers must be seen
        complete)."""
        return self.line.get("server"), self.status


def is_byte_progress(line: dict[str, Any]) -> bool:
    return "completed" in line or "total" in line


class ProgressThrottle:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._held: Step | None = None
        self._last_status: Any = None
        self._last_sent_at: float | None = None

    @property
    def held(self) -> Step | None:
        return self._held

    def offer(self, step: Step) -> list[Step]:
        """The steps to send now, in order (possibly none: `step` is held back)."""
        out: list[Step] = []
        if self._held is not None and self._held.key != step.key:
            out.append(self._held)
            self._held = None
        if self._throttled(step):
            self._held = step  # replaces an older held line of the same status
            return out
        self._held = None  # an older held line of this status is superseded by `step`
        out.append(step)
        self._sent(step)
        return out

    def due_at(self) -> float | None:
        """When the held step goes out if nothing newer arrives first."""
        if self._held is None or self._last_sent_at is None:
            return None
        return self._last_sent_at + self._interval_s

    def due(self) -> list[Step]:
        """The held step, once its interval has passed."""
        due_at = self.due_at()
        if due_at is None or self._clock() < due_at:
            return []
        return self.flush()

    def flush(self) -> list[Step]:
        """Whatever is held, at once (the stream ended, or failed)."""
        held, self._held = self._held, None
        if held is None:
            return []
        self._sent(held)
        return [held]

    def _throttled(self, step: Step) -> bool:
        return (
            is_byte_progress(step.line)
            and step.key == self._last_status
            and self._last_sent_at is not None
            and self._clock() - self._last_sent_at < self._interval_s
        )

    def _sent(self, step: Step) -> None:
        self._last_status = step.key
        self._last_sent_at = self._clock()
