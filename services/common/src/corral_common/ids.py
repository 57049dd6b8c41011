"""Identifiers. Ids travel inside AMQP topic routing keys, so they must never contain dots."""

from __future__ import annotations

import re
import uuid

# Client-chosen ids (request ids, session ids) are accepted when they are safe in a routing key
# and in a URL path segment; anything else is rejected at the edge rather than mangled.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def new_id() -> str:
    return uuid.uuid4().hex


def is_valid_client_id(value: str) -> bool:
    return bool(_CLIENT_ID.match(value))
