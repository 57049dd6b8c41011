"""A generation request's session fields beyond its id: asking for a new
session, how much history it replays, and the metadata kept with its turn.

- `session_id: "new"` (body, `X-Session-Id: new` or `options.session_id: "new"`): Corral makes
  up the id (a UUID hex) and answers with it: in the final chunk or the non-stream answer
  (`session_id`) and in the `X-Session-Id` header, error answers included. "new" is therefore
  not a session id a client can use for itself.
- `max_history_length` (body or `options`): at most this many stored history messages go with
  the request's new ones (0: none); the token budget applies too, whichever is tighter. Unset:
  the session store's `CORRAL_MAX_HISTORY_LENGTH`.
- `metadata` (body or `options`): a free-form JSON object, at most MAX_METADATA_BYTES as
  compact JSON, stored with the turn and shown in the session's history and export. Without a
  session nothing is stored, and it is still checked.

All are Corral's: stripped before the request reaches the backend (extensions.py). A value of
the wrong kind is refused with 400 in the surface's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from corral_common.contracts.session_store import MAX_HISTORY_LENGTH, MAX_METADATA_BYTES
from corral_common.ids import new_id
from corral_gateway.validation import OllamaRequestError

NEW_SESSION = "new"
# Corral's fields in the body and in `options`, never forwarded to the backend.
BODY_FIELDS = ("max_history_length", "metadata")
OPTION_FIELDS = ("max_history_length", "metadata")


@dataclass(frozen=True)
class SessionFields:
    max_history_length: int | None = None
    metadata: dict[str, Any] | None = None


def resolve_session_id(asked: str | None) -> tuple[str | None, bool]:
    """The session id to use, and whether Corral made it up (the client asked for "new")."""
    if asked == NEW_SESSION:
        return new_id(), True
    return asked, False


def read_session_fields(body: dict[str, Any], options: dict[str, Any]) -> SessionFields:
    return SessionFields(
        max_history_length=_history_length(_pick(body, options, "max_history_length")),
        metadata=_metadata(_pick(body, options, "metadata")),
    )


def _pick(body: dict[str, Any], options: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    return value if value is not None else options.get(name)


def _history_length(value: Any) -> int | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= (MAX_HISTORY_LENGTH)
    ):
        raise OllamaRequestError(
            400,
            f"max_history_length must be a whole number from 0 to {MAX_HISTORY_LENGTH} "
            "(how many stored messages go with the new ones)",
        )
    return value


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OllamaRequestError(400, "metadata must be a JSON object")
    size = len(orjson.dumps(value))
    if size > MAX_METADATA_BYTES:
        raise OllamaRequestError(
            400,
            f"metadata is {size} bytes of JSON; at most {MAX_METADATA_BYTES} are kept with a turn",
        )
    return value or None
