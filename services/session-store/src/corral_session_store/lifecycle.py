"""The sessions' lifecycle job: archive what has idled, delete what has been archived too long.

One periodic task per store replica (supervised, restarted if it fails), never work done per
request. Every `session_sweep_interval_s` it:

1. archives the active sessions nobody has used for `session_archive_after_s` (a turn, the
   session's creation, an import or a resume is a use; `touched_at`), one `update_many`;
2. when `session_retention_s` is set, deletes the sessions archived that long ago, with their
   turns (at most `PURGE_BATCH` per sweep; the next sweep takes the rest).

Both steps are idempotent and conditional on the state they change, so replicas running the job
at the same time do the work once between them, and a chat that resumes a session in the same
moment wins (the archive filter no longer matches a session just touched; the purge deletes a
session only if it is still archived past its retention).

An archived session stays readable (history, stats, export, search) and is listed with
`?archived=true`; a chat naming it resumes it with its whole history (docs/session-store.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from pymongo.errors import PyMongoError

from corral_common.supervision import every
from corral_session_store import metrics
from corral_session_store.store import SessionStore, utcnow

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SweepResult:
    archived: int
    purged_sessions: int
    purged_turns: int


class LifecycleJob:
    def __init__(
        self,
        store: SessionStore,
        *,
        archive_after_s: float,
        retention_s: float,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.archive_after_s = archive_after_s
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.archive_after_s > 0

    async def sweep(self) -> SweepResult:
        """One pass: archive, then purge."""
        now = self.clock()
        archived = purged = turns = 0
        if self.archive_after_s > 0:
            archived = await self.store.archive_idle(now, self.archive_after_s)
        if self.retention_s > 0:
            purged, turns = await self.store.purge_archived(now, self.retention_s)
        if archived:
            metrics.SESSIONS_ARCHIVED.inc(archived)
        if purged:
            metrics.SESSIONS_PURGED.inc(purged)
        if archived or purged:
            log.info("sessions archived and purged", archived=archived, purged=purged, turns=turns)
        return SweepResult(archived, purged, turns)

    async def run_forever(self) -> None:
        """Sweep every `interval_s` (first at once). A database that is away only skips a
        sweep; anything else fails the task, which its supervisor restarts."""
        await every(
            self.interval_s,
            self.sweep,
            skip_on=(PyMongoError,),
            skipped="session lifecycle sweep failed; next one later",
        )
