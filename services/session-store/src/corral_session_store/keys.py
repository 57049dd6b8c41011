"""API keys in MongoDB: only their SHA-256 and a display prefix, never the key itself.

`api_keys`, one document per key::

    {_id: "key_<32 hex>", hash: <SHA-256 hex of the key, unique>, prefix: "crl_AbCd1234",
     scope: "user" | "admin", label, owner, created_at, expires_at, revoked_at, revoked_by,
     max_priority, limits: {requests_per_minute, tokens_per_minute, tokens_per_day, max_queued},
     created_by}

The gateway generates the key, shows it once and sends only its hash (see
corral_common.contracts.identity), so the plaintext never reaches this process. A key is found
by its hash (the unique index: one lookup per uncached request); revoking sets `revoked_at`
once, and a key is never deleted, so an audit record's actor stays a key that can be listed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from corral_common.contracts.identity import (
    KeyCreate,
    KeyInfo,
    KeyLimits,
    KeyList,
    KeyQuery,
    KeyRef,
)
from corral_common.errors import CorralError, ErrorType
from corral_session_store.timestamps import optional_epoch, to_date, to_epoch

Document = dict[str, Any]

KEYS_COLLECTION = "api_keys"


def new_key_id() -> str:
    return f"key_{uuid.uuid4().hex}"


def key_not_found(key_id: str) -> CorralError:
    return CorralError(
        ErrorType.KEY_NOT_FOUND, f"Key '{key_id}' does not exist.", details={"key_id": key_id}
    )


def key_info(doc: Document) -> KeyInfo:
    """The key as callers see it: every field but the hash."""
    return KeyInfo(
        id=doc["_id"],
        prefix=doc["prefix"],
        scope=doc["scope"],
        label=doc.get("label"),
        owner=doc.get("owner"),
        created_at=to_epoch(doc["created_at"]),
        expires_at=optional_epoch(doc.get("expires_at")),
        revoked_at=optional_epoch(doc.get("revoked_at")),
        max_priority=doc.get("max_priority"),
        limits=KeyLimits.model_validate(doc.get("limits") or {}),
        created_by=doc.get("created_by"),
    )


class KeyStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.keys: AsyncCollection[Document] = db[KEYS_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.keys.create_indexes(
            [
                IndexModel([("hash", ASCENDING)], unique=True),
                IndexModel([("created_at", DESCENDING)]),
            ]
        )

    async def create(self, params: KeyCreate, now: float | None = None) -> KeyInfo:
        doc: Document = {
            "_id": new_key_id(),
            "hash": params.key_hash,
            "prefix": params.prefix,
            "scope": params.scope,
            "label": params.label,
            "owner": params.owner,
            "created_at": to_date(time.time() if now is None else now),
            "expires_at": (
                None if params.expires_at is None else to_date(params.expires_at, "expires_at")
            ),
            "revoked_at": None,
            "max_priority": params.max_priority,
            "limits": params.limits.model_dump(exclude_none=True),
            "created_by": params.created_by,
        }
        try:
            await self.keys.insert_one(doc)
        except DuplicateKeyError:
            # Only a gateway sending the same key twice gets here (random keys do not collide).
            raise CorralError(
                ErrorType.INVALID_REQUEST, "a key with this hash already exists", status=409
            ) from None
        return key_info(doc)

    async def list(self, query: KeyQuery) -> KeyList:
        selector: Document = {} if query.include_revoked else {"revoked_at": None}
        total = await self.keys.count_documents(selector)
        page = await self.keys.find(
            selector,
            {"hash": 0},
            sort=[("created_at", DESCENDING), ("_id", ASCENDING)],
            skip=query.offset,
            limit=query.limit,
        ).to_list()
        return KeyList(keys=[key_info(doc) for doc in page], total=total)

    async def revoke(self, ref: KeyRef, now: float | None = None) -> tuple[KeyInfo, str]:
        """Revoke once: a second revocation changes nothing and answers the key as it is.
        Returns the key and its hash (which the gateways' caches know it by)."""
        doc = await self.keys.find_one_and_update(
            {"_id": ref.key_id, "revoked_at": None},
            {
                "$set": {
                    "revoked_at": to_date(time.time() if now is None else now),
                    "revoked_by": ref.revoked_by,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self.keys.find_one({"_id": ref.key_id})
        if doc is None:
            raise key_not_found(ref.key_id)
        return key_info(doc), str(doc["hash"])

    async def resolve(self, key_hash: str) -> KeyInfo | None:
        """The key with this hash as it is, revoked or expired ones included: the caller
        decides (and says why it refused)."""
        doc = await self.keys.find_one({"hash": key_hash}, {"hash": 0})
        return None if doc is None else key_info(doc)
