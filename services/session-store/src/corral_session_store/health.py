"""Whether the session store can actually write, and telling the gateways.

A connected client (or an answered `ping`) says nothing about writes: SecantusDB after a full
disk still answers pings while every insert fails, and turns would then be lost to a store
that reports itself healthy. So the store's health is a real write: a small upsert into the
`health` collection (one document per replica), bounded by a timeout, every few seconds, in
the background (a /health call only reads the result, so probes cannot load the database).

The result is broadcast on `status.session-store` (`StoreStatus`) periodically and at once
when it changes, so every gateway knows the store's state without an RPC per /health. The
broadcast also carries the sessions' counts (active, total, archived today) for the gateways'
/health, counted by `SessionCounter` in the background every `session_count_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from corral_common.broker import Broker, BrokerUnavailable, encode
from corral_common.messages import DatabaseStatus, SessionCounts, StoreStatus
from corral_common.redaction import redact_secrets
from corral_common.timeouts import within
from corral_common.topology import STORE_STATUS_ROUTING_KEY
from corral_session_store.store import SessionStore, utcnow

log = structlog.get_logger(__name__)

HEALTH_COLLECTION = "health"


@dataclass
class MongoState:
    """What /health, /ready and the status broadcast know about the database."""

    connected: bool = False
    server: str | None = None
    version: str | None = None
    secantus_version: str | None = None
    error: str | None = None
    # Epoch seconds of the last successful write (a health write or a turn).
    last_write_at: float | None = None
    # Set whenever `connected` flips, so the broadcaster tells gateways at once.
    changed: asyncio.Event | None = None
    # The sessions' last count (SessionCounter); None before the first.
    sessions: SessionCounts | None = None

    def set(self, ok: bool, error: str | None = None) -> None:
        was = self.connected
        self.connected = ok
        self.error = None if ok else redact_secrets(error or "write failed")
        if ok:
            self.last_write_at = time.time()
        if was != ok:
            log.warning("database state changed", up=ok, error=self.error)
            if self.changed is not None:
                self.changed.set()

    def status(self) -> DatabaseStatus:
        return DatabaseStatus(
            up=self.connected,
            last_write_at=self.last_write_at,
            error=self.error,
            server=self.server,
        )


class WriteProbe:
    """Upserts this replica's document in `health` every `interval_s`, at most `timeout_s`
    each, and records the outcome in `state`."""

    def __init__(
        self,
        collection: AsyncCollection[dict[str, object]],
        state: MongoState,
        instance_id: str,
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.collection = collection
        self.state = state
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    async def write_once(self) -> bool:
        try:
            await within(
                self.collection.update_one(
                    {"_id": self.instance_id},
                    {"$set": {"at": time.time(), "service": "session-store"}},
                    upsert=True,
                ),
                self.timeout_s,
            )
        except (PyMongoError, TimeoutError) as exc:
            self.state.set(False, str(exc) or f"health write took over {self.timeout_s:g} s")
            return False
        self.state.set(True)
        return True

    async def run_forever(self) -> None:
        while True:
            await self.write_once()
            await asyncio.sleep(self.interval_s)


class SessionCounter:
    """Counts the sessions every `interval_s` into `state.sessions`. A failed count keeps the
    last one (its `counted_at` says how old it is); the write probe reports the database."""

    def __init__(
        self,
        store: SessionStore,
        state: MongoState,
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.state = state
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock

    async def count_once(self) -> SessionCounts | None:
        now = self.clock()
        try:
            active, total, today = await within(self.store.session_counts(now), self.timeout_s)
        except (PyMongoError, TimeoutError) as exc:
            log.debug("sessions not counted", error=redact_secrets(str(exc)))
            return None
        counts = SessionCounts(
            active=active, total=total, archived_today=today, counted_at=now.timestamp()
        )
        self.state.sessions = counts
        return counts

    async def run_forever(self) -> None:
        while True:
            await self.count_once()
            await asyncio.sleep(self.interval_s)


class StatusBroadcaster:
    """Publishes the store's `StoreStatus` every `interval_s`, and at once on a change."""

    def __init__(
        self, broker: Broker, state: MongoState, instance_id: str, interval_s: float
    ) -> None:
        self.broker = broker
        self.state = state
        self.instance_id = instance_id
        self.interval_s = interval_s
        self.state.changed = asyncio.Event()

    def snapshot(self) -> StoreStatus:
        return StoreStatus(
            instance_id=self.instance_id,
            sent_at=time.time(),
            database=self.state.status(),
            sessions=self.state.sessions,
        )

    async def run_forever(self) -> None:
        changed = self.state.changed
        assert changed is not None
        while True:
            changed.clear()
            try:
                await self.broker.publish_event(
                    STORE_STATUS_ROUTING_KEY, encode(self.snapshot()), durable=False
                )
            except BrokerUnavailable:
                # Gateways treat a silent store as down once its last status is stale.
                log.debug("store status not published: broker unavailable")
            with contextlib.suppress(TimeoutError):
                await within(changed.wait(), self.interval_s)
