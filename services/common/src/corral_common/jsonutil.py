"""Fast JSON for the hot path. orjson also refuses lone surrogates, which we want at the edge.

Nesting is bounded at the edge by MAX_DEPTH. orjson itself decodes up to 1024 levels but
encodes only 254; a client body must stay far below that because it travels wrapped in Corral's
own messages (a job is a few levels around the client's payload), and a job the scheduler cannot
encode or decode is dead-lettered instead of answered.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

# The deepest nesting a client body may have (objects and arrays, the outermost counting as 1).
MAX_DEPTH = 64


class TooDeep(ValueError):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"JSON nested deeper than {limit} levels")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def loads_bounded(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`loads` for what clients send: TooDeep past `max_depth` levels of nesting, also where
    orjson's own limit would have answered with a decode error."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            raise TooDeep(max_depth) from exc
        raise
    check_depth(value, max_depth, data)
    return value


def check_depth(value: Any, max_depth: int, raw: bytes | str | None = None) -> None:
    """TooDeep if `value` nests containers deeper than `max_depth`."""
    if raw is not None:
        # Cheap and common: a document with fewer brackets than the limit cannot be too deep.
        # Brackets inside strings only make this count larger, never smaller.
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if raw.count(b"[") + raw.count(b"{") <= max_depth:
            return
    # Level by level, looking only at containers, so a long flat list costs one C-level pass.
    level: list[Any] = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise TooDeep(max_depth)
        below: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            below.extend(item for item in items if isinstance(item, (dict, list)))
        level = below


def ndjson_line(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
