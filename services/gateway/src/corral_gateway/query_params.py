"""Query parameters checked at the edge: whole numbers (`limit`, `offset`) and flags
(`archived`). A value that is not a plain integer, or outside its documented bounds, or a flag
that is not one of `FLAGS`, is a 400 `invalid_request` naming the parameter, never a 500 and
never a query the store has to refuse."""

from __future__ import annotations

import re

from aiohttp import web

from corral_common.clip import clip
from corral_common.errors import CorralError, ErrorType

# The bounds Corral documents (README, "Limits"); the session store enforces the same ones.
SESSION_LIST_MAX = 500
SEARCH_MAX = 200
OFFSET_MAX = 1_000_000

_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
# The spellings a flag takes, exactly (the OpenAPI document lists them in this order).
FLAGS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def int_query(
    request: web.Request, name: str, default: int, *, maximum: int, minimum: int = 0
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = int(raw) if _INTEGER.fullmatch(raw.strip()) else None
    if value is None or not minimum <= value <= maximum:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"{name} must be a whole number from {minimum} to {maximum}, not {clip(raw)!r}",
            details={"parameter": name, "minimum": minimum, "maximum": maximum},
        )
    return value


def flag_query(request: web.Request, name: str) -> bool:
    """A flag, false when absent."""
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw not in FLAGS:
        raise CorralError(
            ErrorType.INVALID_REQUEST,
            f"{name} must be true or false, not {clip(raw)!r}",
            details={"parameter": name},
        )
    return FLAGS[raw]
