"""Credentials are never shown: not in /health, not in error texts, not in logs.

Any URL setting may carry `user:password@` (`CORRAL_OLLAMA_URL` behind a proxy with basic
auth, `CORRAL_AMQP_URL`, `CORRAL_MONGO_URL`). `redact_url` masks the password of one URL for
display at the source; `redact_secrets` masks every `scheme://user:password@` inside any text
(an exception's message, a library's log line), which the log processor applies to every
string it writes, so a URL that slips through at the source is still masked.

The same pass masks API keys: a Corral key (`crl_` + 46 characters, corral_common.api_keys)
keeps only its display prefix (`crl_AbCd1234***`), and the token of a `Bearer <token>` or an
`X-API-Key: <value>` (a header written out whole) is masked entirely, whatever it is (the
operator's `CORRAL_ADMIN_KEY` can be any string).
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


# A Corral key, or what is left of one after clipping: its display part (`crl_` + 8) is kept.
_CORRAL_KEY = re.compile(r"(?P<shown>crl_[0-9A-Za-z]{8})[0-9A-Za-z]+")
# `Bearer <token>` (the Authorization scheme is case-insensitive) and `X-API-Key: <value>` or
# `"x-api-key": "<value>"` as a header dump writes it.
_BEARER = re.compile(r"(?P<lead>\bbearer\s+)(?P<token>[^\s,;'\"<>]+)", re.IGNORECASE)
_API_KEY_HEADER = re.compile(
    r"(?P<lead>x-api-key['\"]?\s*[:=]\s*['\"]?)(?P<token>[^\s,;'\"<>]+)", re.IGNORECASE
)


def _shown_part(match: re.Match[str]) -> str:
    return f"{match.group('shown')}{MASK}"


def _mask_token(match: re.Match[str]) -> str:
    return f"{match.group('lead')}{MASK}"


def redact_secrets(text: str) -> str:
    """`text` with the password of every URL, every Corral key and every bearer token or
    `X-API-Key` value in it masked."""
    if "@" in text:
        text = _USERINFO.sub(_mask, text)
    if "crl_" in text:
        text = _CORRAL_KEY.sub(_shown_part, text)
    text = _BEARER.sub(_mask_token, text)
    return _API_KEY_HEADER.sub(_mask_token, text)
