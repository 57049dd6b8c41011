"""API keys and the audit log under `/admin`: create, list, show, revoke; read the audit.

The key itself is generated here (`corral_common.api_keys.generate_key`), shown once in the
`201` answer to `POST /admin/keys`, and never sent anywhere: the session store receives only its
hash and display prefix. Times are RFC 3339 strings in every answer (the store keeps epoch
seconds). Bodies are checked here with clear `400 invalid_request`s before anything is stored.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from corral_common import jsonutil
from corral_common.api_keys import display_prefix, generate_key, key_hash
from corral_common.clip import clip
from corral_common.contracts.identity import (
    MAX_LABEL,
    MAX_LIST,
    SCOPES,
    AuditQuery,
    KeyCreate,
    KeyInfo,
    KeyLimits,
    KeyQuery,
    KeyRef,
)
from corral_common.errors import CorralError, ErrorType
from corral_common.messages import PRIORITIES
from corral_gateway.body import read_body
from corral_gateway.identity.directory import KeyDirectory
from corral_gateway.identity.gate import AUDIT_TARGET, GATEKEEPER
from corral_gateway.identity.principal import caller_of
from corral_gateway.query_params import OFFSET_MAX, int_query
from corral_gateway.responses import json_response

CREATE_FIELDS = ("scope", "label", "owner", "expires_at", "max_priority", "limits")
LIMIT_FIELDS = tuple(KeyLimits.model_fields)
MAX_OWNER = 256
MAX_LIMIT = 1_000_000_000
MAX_BODY_BYTES = 64 * 1024
# The latest expiry a key may have (RFC 3339 cannot write years past 9999).
LATEST_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
# The store's key ids (contracts.identity.KeyId).
KEY_ID = re.compile(r"key_[0-9a-f]{1,64}")


def rfc3339(epoch: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC time (`2025-01-31T12:00:00.250Z`)."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def key_document(info: KeyInfo) -> dict[str, Any]:
    """A key as the API shows it: everything but the secret, times as RFC 3339."""
    return {
        "id": info.id,
        "prefix": info.prefix,
        "scope": info.scope,
        "label": info.label,
        "owner": info.owner,
        "created_at": rfc3339(info.created_at),
        "expires_at": rfc3339(info.expires_at),
        "revoked_at": rfc3339(info.revoked_at),
        "max_priority": info.max_priority,
        "limits": info.limits.model_dump(),
        "created_by": info.created_by,
    }


def _directory(request: web.Request) -> KeyDirectory:
    directory = request.app[GATEKEEPER].directory
    if directory is None:
        raise CorralError(
            ErrorType.INTERNAL_ERROR, "the gateway is not connected to the key store", status=503
        )
    return directory


def _invalid(message: str, field: str) -> CorralError:
    return CorralError(ErrorType.INVALID_REQUEST, message, details={"field": field})


def parse_expiry(value: Any, now: float) -> float | None:
    """`expires_at` as epoch seconds: an RFC 3339 time with its offset, or epoch seconds;
    it must lie in the future."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _invalid("expires_at must be an RFC 3339 time or epoch seconds", "expires_at")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _invalid(
                f"expires_at {clip(value)!r} is not an RFC 3339 time "
                "(for example 2030-01-31T00:00:00Z)",
                "expires_at",
            ) from None
        if moment.tzinfo is None:
            raise _invalid(
                "expires_at needs a UTC offset (Z or +hh:mm): the moment would be ambiguous",
                "expires_at",
            )
        epoch = moment.timestamp()
    else:
        epoch = float(value)
    if not math.isfinite(epoch) or epoch > LATEST_EXPIRY:
        raise _invalid("expires_at is out of range", "expires_at")
    if epoch <= now:
        raise _invalid("expires_at must be in the future", "expires_at")
    return epoch


def parse_limits(value: Any) -> KeyLimits:
    if value is None:
        return KeyLimits()
    if not isinstance(value, dict):
        raise _invalid("limits must be an object", "limits")
    for name, limit in value.items():
        if name not in LIMIT_FIELDS:
            raise _invalid(
                f"unknown limit {clip(str(name))!r}: use {', '.join(LIMIT_FIELDS)}", "limits"
            )
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT
        ):
            raise _invalid(
                f"limits.{name} must be a whole number from 0 (no limit) to {MAX_LIMIT}, "
                "or null (the gateway's default)",
                f"limits.{name}",
            )
    return KeyLimits.model_validate(value)


def parse_creation(body: dict[str, Any], now: float) -> dict[str, Any]:
    """The fields of a new key, checked; a 400 names the first bad one."""
    unknown = [name for name in body if name not in CREATE_FIELDS]
    if unknown:
        raise _invalid(
            f"unknown field {clip(unknown[0])!r}: a key takes {', '.join(CREATE_FIELDS)}",
            unknown[0],
        )
    scope = body.get("scope")
    if scope not in SCOPES:
        raise _invalid(f"scope must be one of {', '.join(SCOPES)}", "scope")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        raise _invalid(f"label must be a string of at most {MAX_LABEL} characters", "label")
    owner = body.get("owner")
    if owner is not None and (not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER):
        raise _invalid(
            f"owner must be a non-empty string of at most {MAX_OWNER} characters", "owner"
        )
    priority = body.get("max_priority")
    if priority is not None and priority not in PRIORITIES:
        raise _invalid(f"max_priority must be one of {', '.join(PRIORITIES)}", "max_priority")
    return {
        "scope": scope,
        "label": label,
        "owner": owner,
        "expires_at": parse_expiry(body.get("expires_at"), now),
        "max_priority": priority,
        "limits": parse_limits(body.get("limits")),
    }


async def _read_object(request: web.Request) -> dict[str, Any]:
    # An OllamaRequestError (body too large) is rendered as invalid_request, with its 413.
    raw = await read_body(request, MAX_BODY_BYTES)
    example = 'the body must be a JSON object, e.g. {"scope": "user", "label": "alice"}'
    try:
        body = jsonutil.loads_bounded(raw)
    except (jsonutil.TooDeep, jsonutil.JSONDecodeError):
        raise _invalid(example, "body") from None
    if not isinstance(body, dict):
        raise _invalid(example, "body")
    return body


async def create_key(request: web.Request) -> web.Response:
    """Create an API key: `{"scope", "label", "owner", "expires_at", "max_priority",
    "limits"}` -> 201 with the key, the only time it is shown."""
    body = await _read_object(request)
    fields = parse_creation(body, request.app[GATEKEEPER].now())
    key = generate_key()
    info = await _directory(request).create_key(
        KeyCreate(
            key_hash=key_hash(key),
            prefix=display_prefix(key),
            created_by=caller_of(request).actor,
            **fields,
        )
    )
    request[AUDIT_TARGET] = info.id
    document = key_document(info)
    # The only answer that ever holds the key.
    return json_response({"id": info.id, "key": key, **document}, 201)


async def list_keys(request: web.Request) -> web.Response:
    """The API keys, newest first, never their secrets (`include_revoked=true` for all)."""
    include_revoked = _flag(request, "include_revoked")
    limit = int_query(request, "limit", 100, minimum=1, maximum=MAX_LIST)
    offset = int_query(request, "offset", 0, maximum=OFFSET_MAX)
    found = await _directory(request).list_keys(
        KeyQuery(include_revoked=include_revoked, limit=limit, offset=offset)
    )
    return json_response({"keys": [key_document(k) for k in found.keys], "total": found.total}, 200)


async def show_key(request: web.Request) -> web.Response:
    """One API key, revoked or not, never its secret; 404 key_not_found."""
    key_id = _key_id(request)
    directory = _directory(request)
    # The store lists keys but has no lookup by id: page through them (keys are few).
    offset = 0
    while True:
        page = await directory.list_keys(
            KeyQuery(include_revoked=True, limit=MAX_LIST, offset=offset)
        )
        for info in page.keys:
            if info.id == key_id:
                return json_response(key_document(info), 200)
        offset += len(page.keys)
        if not page.keys or offset >= page.total:
            raise _not_found(key_id)


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke an API key: every gateway refuses it within seconds (at once by broadcast, by
    `key_cache_s` at worst); the key as it now is, with `revoked_at`."""
    key_id = _key_id(request)
    info = await _directory(request).revoke_key(
        KeyRef(key_id=key_id, revoked_by=caller_of(request).actor)
    )
    return json_response(key_document(info), 200)


async def audit_log(request: web.Request) -> web.Response:
    """The audit log of admin actions, newest first (`actor=` for one key's)."""
    limit = int_query(request, "limit", 100, minimum=1, maximum=MAX_LIST)
    offset = int_query(request, "offset", 0, maximum=OFFSET_MAX)
    actor = request.query.get("actor") or None
    if actor is not None and len(actor) > MAX_OWNER:
        raise _invalid(f"actor must be at most {MAX_OWNER} characters", "actor")
    found = await _directory(request).audit_list(
        AuditQuery(limit=limit, offset=offset, actor=actor)
    )
    entries = [
        {**entry, "at": rfc3339(entry["at"])}
        if isinstance(entry.get("at"), int | float) and not isinstance(entry.get("at"), bool)
        else entry
        for entry in found.entries
    ]
    return json_response({"entries": entries, "total": found.total}, 200)


def _key_id(request: web.Request) -> str:
    """The path's key id; one that cannot be an id is simply not found."""
    key_id = request.match_info["key_id"]
    if not KEY_ID.fullmatch(key_id):
        raise _not_found(key_id)
    return key_id


def _not_found(key_id: str) -> CorralError:
    return CorralError(
        ErrorType.KEY_NOT_FOUND, f"key {clip(key_id)!r} not found", details={"id": clip(key_id)}
    )


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise _invalid(f"{name} must be true or false, not {clip(raw)!r}", name)
