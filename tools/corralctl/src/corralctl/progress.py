"""A pull's progress as the operator sees it: one bar per layer, redrawn in place on a terminal,
or a line each tenth of the way when the output is a file or a pipe (a log stays readable).

It reads Ollama's pull lines: `{"status"}` for the steps (`pulling manifest`, `verifying sha256
digest`, `writing manifest`, `success`) and `{"status", "digest", "total", "completed"}` for a
layer being downloaded."""

from __future__ import annotations

from typing import Any, TextIO

from corralctl.tables import size

BAR_WIDTH = 30
# Without a terminal, a layer's line is written again each time it passes another tenth.
PLAIN_STEP_PERCENT = 10


def bar(completed: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[#########---------]  45%`."""
    fraction = min(1.0, completed / total) if total > 0 else 0.0
    filled = round(fraction * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:3.0f}%"


class PullProgress:
    def __init__(self, out: TextIO, *, live: bool) -> None:
        self._out = out
        self._live = live
        self._status: str | None = None
        self._percent_shown = -PLAIN_STEP_PERCENT
        self._open_line = False

    def update(self, line: dict[str, Any]) -> None:
        status = str(line.get("status", ""))
        total, completed = line.get("total"), line.get("completed")
        if status != self._status:
            self._end_line()
            self._status = status
            self._percent_shown = -PLAIN_STEP_PERCENT
        if isinstance(total, int) and total > 0:
            done = completed if isinstance(completed, int) else 0
            self._layer(status, done, total)
        elif status:
            self._write(status + "\n")

    def close(self) -> None:
        self._end_line()

    def _layer(self, status: str, completed: int, total: int) -> None:
        text = f"{_short(status)}  {bar(completed, total)}  {size(completed)}/{size(total)}"
        if self._live:
            self._write(f"\r{text}\x1b[K")
            self._open_line = True
            return
        percent = completed * 100 // total
        further = percent >= self._percent_shown + PLAIN_STEP_PERCENT or completed >= total
        if further and percent != self._percent_shown:
            self._write(text + "\n")
            self._percent_shown = percent

    def _end_line(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _short(status: str) -> str:
    """`pulling sha256:0123456789ab...` as `pulling 0123456789ab`: the digest's start is enough."""
    verb, _, digest = status.partition(" ")
    digest = digest.removeprefix("sha256:")
    return f"{verb} {digest[:12]}" if digest else status
