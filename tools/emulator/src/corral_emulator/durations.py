"""`keep_alive` parsing with Go's semantics.

Mirrors `api.Duration.UnmarshalJSON` and `time.ParseDuration`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NANOS_PER_SECOND = 1_000_000_000
FOREVER_NS = 2**63 - 1
"""Go's `math.MaxInt64` duration: what any negative keep_alive turns into."""

_UNIT_NANOS: dict[str, float] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "h": 3600 * NANOS_PER_SECOND,
}
_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)")
_UNIT = re.compile(r"[^\d.]*")


class DurationError(ValueError):
    """A keep_alive value real Ollama rejects with 400; the message is Go's."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A parsed keep_alive: how long a model stays loaded once idle."""

    nanos: int

    @property
    def unloads_now(self) -> bool:
        return self.nanos == 0

    @property
    def forever(self) -> bool:
        return self.nanos >= FOREVER_NS


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`, returning nanoseconds (negative allowed)."""
    quoted = '"' + text + '"'
    rest = text
    sign = 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise DurationError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = _NUMBER.match(rest)
        if number is None:
            raise DurationError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit_match = _UNIT.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        if not unit:
            raise DurationError(f"time: missing unit in duration {quoted}")
        if unit not in _UNIT_NANOS:
            raise DurationError(f'time: unknown unit "{unit}" in duration {quoted}')
        rest = rest[len(unit) :]
        total += float(number.group(0)) * _UNIT_NANOS[unit]
    if total > FOREVER_NS:
        raise DurationError(f"time: invalid duration {quoted}")
    return sign * int(total)


def parse_keep_alive(value: object) -> KeepAlive | None:
    """None when absent (JSON null); numbers are seconds; strings are Go durations."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        nanos = FOREVER_NS if value < 0 else min(int(value * NANOS_PER_SECOND), FOREVER_NS)
        return KeepAlive(nanos)
    if isinstance(value, str):
        nanos = parse_go_duration(value)
        return KeepAlive(FOREVER_NS if nanos < 0 else nanos)
    go_type = "[]interface {}" if isinstance(value, list) else "map[string]interface {}"
    raise DurationError(f"Unsupported type: '{go_type}'")
