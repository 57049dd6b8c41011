"""Credentials in URLs are never shown: not in /health, not in error texts, not in logs.

Any URL setting may carry `user:password@` (`CORRAL_OLLAMA_URL` behind a proxy with basic
auth, `CORRAL_AMQP_URL`, `CORRAL_MONGO_URL`). `redact_url` masks the password of one URL for
display at the source; `redact_secrets` masks every `scheme://user:password@` inside any text
(an exception's message, a library's log line), which the log processor applies to every
string it writes, so a URL that slips through at the source is still masked.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# `scheme://user:password@` (the password is anything up to the last `@` before the host, but
# never crossing whitespace, a quote or a `/`), and `scheme://token@` with no user part.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<user>[^\s/:@'\"<>]*)(?::(?P<password>[^\s/'\"<>]*))?@"
)


def redact_url(url: str) -> str:
    """The URL with its password masked (`user:***@host`), for showing or logging it."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact_secrets(url)
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))


def _mask(match: re.Match[str]) -> str:
    if match.group("password") is None:
        # `scheme://secret@host`: a user part alone is often a token; keep only the scheme.
        return f"{match.group('scheme')}{MASK}@" if match.group("user") else match.group(0)
    return f"{match.group('scheme')}{match.group('user')}:{MASK}@"


def redact_secrets(text: str) -> str:
    """`text` with the password of every URL in it masked."""
    if "@" not in text:
        return text
    return _USERINFO.sub(_mask, text)
