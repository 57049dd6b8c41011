"""The key a request presents: `Authorization: Bearer <key>` (what the `openai` SDK sends, and
the `ollama` clients with `headers=`) or `X-API-Key: <key>`.

Read only with auth on; with auth off no header is looked at (today's behaviour). Nothing here
logs or echoes a presented value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from multidict import MultiMapping

AUTHORIZATION = "Authorization"
API_KEY_HEADER = "X-API-Key"

FailureReason = Literal[
    "missing", "malformed", "conflicting", "unknown", "revoked", "expired", "blocked"
]
"""Why an authentication failed (the `reason` of `corral_auth_failures_total`)."""


@dataclass(frozen=True)
class CredentialError(Exception):
    """The request's credentials cannot be read: a reason and a message for the client."""

    reason: FailureReason
    message: str


def presented_key(headers: MultiMapping[str]) -> str | None:
    """The key the request presents, or None when it presents none. Two `Authorization` (or
    `X-API-Key`) headers, a scheme other than Bearer, an empty key, or both headers with
    different keys are refused."""
    bearer = _single(headers, AUTHORIZATION)
    if bearer is not None:
        scheme, _, token = bearer.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise CredentialError(
                "malformed", "the Authorization header must be 'Bearer <API key>'"
            )
        bearer = token
    api_key = _single(headers, API_KEY_HEADER)
    if api_key is not None:
        api_key = api_key.strip()
        if not api_key:
            raise CredentialError("malformed", "the X-API-Key header is empty")
    if bearer is not None and api_key is not None and bearer != api_key:
        raise CredentialError(
            "conflicting", "Authorization and X-API-Key present different keys: send one"
        )
    return bearer if bearer is not None else api_key


def _single(headers: MultiMapping[str], name: str) -> str | None:
    values = headers.getall(name, [])
    if len(values) > 1:
        raise CredentialError("conflicting", f"more than one {name} header: send one")
    return values[0] if values else None
