"""The audit log: who did what to the deployment, and when (one record per admin action).

`audit_log`, one document per action::

    {_id: ObjectId, at, actor: <key id | "operator" | "anonymous">,
     action: "<METHOD> <route>", target, status, ip, request_id}

The gateway writes a record after an admin route has answered; records are only ever added.
Listed newest first (the `at` index), optionally one actor's.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from corral_common.contracts.identity import AuditEntry, AuditList, AuditQuery
from corral_session_store.timestamps import to_date, to_epoch

Document = dict[str, Any]

AUDIT_COLLECTION = "audit_log"
FIELDS = ("actor", "action", "target", "status", "ip", "request_id")


class AuditLog:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.log: AsyncCollection[Document] = db[AUDIT_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.log.create_indexes(
            [
                IndexModel([("at", DESCENDING)]),
                IndexModel([("actor", ASCENDING), ("at", DESCENDING)]),
            ]
        )

    async def write(self, entry: AuditEntry) -> None:
        at = time.time() if entry.at is None else entry.at
        doc: Document = {"at": to_date(at, "at")}
        doc.update({field: getattr(entry, field) for field in FIELDS})
        await self.log.insert_one(doc)

    async def list(self, query: AuditQuery) -> AuditList:
        selector: Document = {} if query.actor is None else {"actor": query.actor}
        total = await self.log.count_documents(selector)
        page = await self.log.find(
            selector,
            sort=[("at", DESCENDING), ("_id", DESCENDING)],
            skip=query.offset,
            limit=query.limit,
        ).to_list()
        entries = [
            {"at": to_epoch(doc["at"]), **{field: doc.get(field) for field in FIELDS}}
            for doc in page
        ]
        return AuditList(entries=entries, total=total)
