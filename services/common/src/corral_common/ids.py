"""Identifiers. Ids travel inside AMQP topic routing keys, so they must never contain dots.

The longest routing key Corral builds is an event's, `gw.<gateway_id>.<request_id>.<kind>`, and
RabbitMQ refuses (by closing the channel) any routing key over 255 bytes. The limits below keep
every such key under that bound whatever a client sends: client ids at most CLIENT_ID_MAX_CHARS,
instance ids (checked in the settings at startup) at most INSTANCE_ID_MAX_CHARS, event kinds at
most EVENT_KIND_MAX_CHARS; all ASCII, so characters are bytes.
"""

from __future__ import annotations

import re
import uuid

from corral_common.clip import clip

ROUTING_KEY_MAX_BYTES = 255
CLIENT_ID_MAX_CHARS = 128
INSTANCE_ID_MAX_CHARS = 64
EVENT_KIND_MAX_CHARS = 16
# gw. + gateway id + . + request id + . + kind
assert 3 + INSTANCE_ID_MAX_CHARS + 1 + CLIENT_ID_MAX_CHARS + 1 + EVENT_KIND_MAX_CHARS <= (
    ROUTING_KEY_MAX_BYTES
)

# Client-chosen ids (request ids, session ids) are accepted when they are safe in a routing key
# and in a URL path segment; anything else is rejected at the edge rather than mangled.
_CLIENT_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{CLIENT_ID_MAX_CHARS}}}")
_INSTANCE_ID = re.compile(rf"[A-Za-z0-9_\-]{{1,{INSTANCE_ID_MAX_CHARS}}}")

CLIENT_ID_RULE = f"1 to {CLIENT_ID_MAX_CHARS} letters, digits, '-' or '_'"
INSTANCE_ID_RULE = f"1 to {INSTANCE_ID_MAX_CHARS} letters, digits, '-' or '_'"


class InvalidId(ValueError):
    """A client id that may not be used; `message` is safe to show (the value is clipped)."""

    def __init__(self, field: str, value: object) -> None:
        shown = clip(value) if isinstance(value, str) else type(value).__name__
        self.field = field
        self.message = f"invalid {field} {shown!r}: use {CLIENT_ID_RULE}"
        super().__init__(self.message)


def new_id() -> str:
    return uuid.uuid4().hex


def is_valid_client_id(value: str) -> bool:
    # fullmatch, not match with `$`: `$` also matches before a trailing newline.
    return isinstance(value, str) and _CLIENT_ID.fullmatch(value) is not None


def check_client_id(value: object, field: str) -> str:
    """`value` if it is a valid client id (request id, session id), else InvalidId. The one
    check every route that takes an id uses, whatever surface it answers in."""
    if not isinstance(value, str) or not is_valid_client_id(value):
        raise InvalidId(field, value)
    return value


def is_valid_instance_id(value: str) -> bool:
    return _INSTANCE_ID.fullmatch(value) is not None
