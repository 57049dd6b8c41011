"""Fixed-window counters shared by every gateway replica (requests per minute, tokens per
minute and per day, failed authentications), kept in MongoDB with atomic updates.

`rate_counters`, one document per (subject, counter, window)::

    {_id: "<subject>|<name>|<window_start>", subject, name, window_start, window_s,
     count, recent: [{t: <adder's id>, n: <added>}, ...the last RECENT_ADDS], expires_at}

A window starts at a multiple of its length in epoch seconds (`floor(now / window_s) *
window_s`), taken from the caller's clock, so every replica puts a moment in the same window;
it ends (`reset_at`) one length later. An increment is an update (`$inc` the count, and
`$push` the adder's own id and amount onto `recent`, which keeps the last `RECENT_ADDS`), then a
read of the document: the adder's total is the count less what the adds after its own in
`recent` added. So concurrent callers each get a distinct total, and the last total is the
exact sum, with no read-modify-write window; only an add with more than `RECENT_ADDS` others
between its update and its read gets the count as read, which is never less than its own.
Not `findAndModify`, which would answer in one round trip: SecantusDB serves it by scanning the
whole collection (7 to 8.5 ms an add at 1,000 counters, 75 ms at 10,000, against about 1.1 ms
at any size this way: bench/session_store.py --scale), and the collection holds a document per
caller and window. Adding 0 reads the counter without writing anything.

The window's document is created apart, by an upsert that only sets fields on insert, and
then counted in: a single `$inc` upsert would be one round trip less for a window's first
count, but SecantusDB, when two such upserts race to create a document, applies both and
answers one of them with no document, so that caller would not learn its total.

A window's document is kept one window past its end and then deleted by `purge` (run
periodically by the store): a plain `delete_many` on an index works on every server, unlike a
TTL sweep whose timing the server chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from corral_common.contracts.identity import CounterSpec, CounterValue
from corral_common.ids import new_id
from corral_common.supervision import every
from corral_session_store.timestamps import to_date

log = structlog.get_logger(__name__)

Document = dict[str, Any]

COUNTERS_COLLECTION = "rate_counters"
CREATE_ATTEMPTS = 3
# The adds a counter remembers (by whom, how much): enough for every add to find its own
# total while that many others come between its update and its read.
RECENT_ADDS = 64


class CounterContention(PyMongoError):
    """A counter's document kept disappearing between its creation and the count (a 503)."""


def window_start(now: float, window_s: int) -> int:
    return int(now // window_s) * window_s


def counter_id(subject: str, name: str, start: int) -> str:
    return f"{subject}|{name}|{start}"


def own_total(doc: Document, adder: str) -> int:
    """The count as it was just after `adder`'s add: the count read, less the adds that came
    after it (the count read when `adder` is no longer among the recent ones)."""
    count = int(doc.get("count") or 0)
    later = 0
    for add in reversed(doc.get("recent") or []):
        if add.get("t") == adder:
            return count - later
        later += int(add.get("n") or 0)
    return count


class Counters:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.counters: AsyncCollection[Document] = db[COUNTERS_COLLECTION]

    async def ensure_indexes(self) -> None:
        await self.counters.create_indexes([IndexModel([("expires_at", ASCENDING)])])

    async def count(
        self, subject: str, specs: list[CounterSpec], now: float | None = None
    ) -> list[CounterValue]:
        """Each counter's total in the window holding `now`, after adding its `add`."""
        at = time.time() if now is None else now
        to_date(at, "now")  # refuse a time no window can be dated by, before any write
        return list(await asyncio.gather(*(self._count(subject, spec, at) for spec in specs)))

    async def _count(self, subject: str, spec: CounterSpec, now: float) -> CounterValue:
        start = window_start(now, spec.window_s)
        end = start + spec.window_s
        key = counter_id(subject, spec.name, start)
        if spec.add == 0:
            doc = await self.counters.find_one({"_id": key}, {"count": 1})
        else:
            doc = await self._add(key, subject, spec, start)
        count = int(doc["count"]) if doc is not None else 0
        return CounterValue(name=spec.name, count=count, reset_at=float(end))

    async def _add(self, key: str, subject: str, spec: CounterSpec, start: int) -> Document:
        for _ in range(CREATE_ATTEMPTS):
            adder = new_id()
            added = await self.counters.update_one(
                {"_id": key},
                {
                    "$inc": {"count": spec.add},
                    "$push": {
                        "recent": {"$each": [{"t": adder, "n": spec.add}], "$slice": -RECENT_ADDS}
                    },
                },
            )
            if added.matched_count:
                doc = await self.counters.find_one({"_id": key}, {"count": 1, "recent": 1})
                if doc is not None:
                    return {"count": own_total(doc, adder)}
            # The window's first count: create its document (of racing creators one inserts,
            # the others change nothing), then count in it.
            with contextlib.suppress(DuplicateKeyError):
                await self.counters.update_one(
                    {"_id": key},
                    {
                        "$setOnInsert": {
                            "subject": subject,
                            "name": spec.name,
                            "window_start": start,
                            "window_s": spec.window_s,
                            "count": 0,
                            "recent": [],
                            "expires_at": to_date(start + 2 * spec.window_s),
                        }
                    },
                    upsert=True,
                )
        # Only a counter purged as soon as it was created (a caller's clock far behind) gets here.
        raise CounterContention(f"counter {key!r} vanished while being counted")

    async def purge(self, now: float | None = None) -> int:
        """Delete the counters kept past their window; returns how many went."""
        result = await self.counters.delete_many(
            {"expires_at": {"$lte": to_date(time.time() if now is None else now)}}
        )
        return result.deleted_count

    async def purge_forever(
        self, interval_s: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        """`purge` now and every `interval_s`; a database that is away is tried again next
        time."""
        await every(
            interval_s,
            self._purge_logged,
            skip_on=(PyMongoError,),
            skipped="rate counters not purged",
            sleep=sleep,
        )

    async def _purge_logged(self) -> None:
        purged = await self.purge()
        if purged:
            log.debug("expired rate counters purged", count=purged)
