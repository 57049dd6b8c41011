"""What the human output is made of: aligned tables, `name  value` blocks, and short renderings
of sizes, durations and times. Nothing here knows a command."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

EMPTY = "-"


def cell(value: Any) -> str:
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or EMPTY
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *cells]:
        padded = [text.ljust(width) for text, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """`name  value` lines, the names padded to one width."""
    shown = [(name, cell(value)) for name, value in pairs]
    width = max((len(name) for name, _ in shown), default=0)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in shown)


def size(n: Any) -> str:
    """Bytes in the units Ollama shows (decimal: 2.0 GB)."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return EMPTY
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def millis(ms: Any) -> str:
    """A duration given in milliseconds: `350 ms`, `4.2 s`, `3m05s`."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return EMPTY
    if ms < 1000:
        return f"{ms:.0f} ms"
    return seconds(ms / 1000)


def seconds(s: Any) -> str:
    if not isinstance(s, int | float) or isinstance(s, bool):
        return EMPTY
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def moment(value: Any) -> str:
    """A time (RFC 3339 text or epoch seconds) as `YYYY-MM-DD HH:MM:SS` UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        at = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and value:
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if at.tzinfo is not None:
            at = at.astimezone(UTC)
    else:
        return EMPTY
    return at.strftime("%Y-%m-%d %H:%M:%S")


def ago(epoch: Any, now: float | None = None) -> str:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return EMPTY
    return f"{seconds(max(0.0, (now or time.time()) - epoch))} ago"
