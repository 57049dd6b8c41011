"""Jobs the model manager puts in the scheduler's lane (loads, unloads), and their answers.

Anything that changes what the backend is doing goes through the lane, so it never overlaps a
generation. The manager submits as if it were a gateway: `gateway_id` is its own instance id,
and the scheduler's events for the job come back on `gw.<instance_id>.<request_id>.<kind>` to
the manager's own queue.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from corral_common.ids import new_id
from corral_common.messages import FINAL_KINDS, Event, Job, JobKind
from corral_common.model_names import canonical_model_name

log = structlog.get_logger(__name__)

# Puts a job in the lane (`corral_common.dead_letters.publish_job`); raises on refusal.
PublishJob = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PendingJob:
    job: Job
    # Why it was submitted (an unload's reason: idle, memory; "preload" for loads).
    reason: str
    submitted_at: float

    @property
    def key(self) -> str:
        return canonical_model_name(self.job.model)


class JobSubmitter:
    def __init__(
        self,
        submitter_id: str,
        publish: PublishJob,
        *,
        answer_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.submitter_id = submitter_id
        self._publish = publish
        self._answer_timeout_s = answer_timeout_s
        self._clock = clock
        self._pending: dict[str, PendingJob] = {}

    async def submit(
        self,
        kind: JobKind,
        model: str,
        payload: dict[str, Any],
        *,
        reason: str,
        server: str | None = None,
    ) -> PendingJob:
        """Publish a job (to run on pool server `server`, if set); raises the broker's refusal
        (QueueFull, BrokerUnavailable)."""
        job = Job(
            kind=kind,
            model=model,
            payload=payload,
            request_id=new_id(),
            gateway_id=self.submitter_id,
            enqueued_at=self._clock(),
            # Nobody watches these: the first position is all the scheduler need send.
            queue_progress=False,
            server=server,
        )
        pending = PendingJob(job=job, reason=reason, submitted_at=self._clock())
        # Registered before publishing: the answer may arrive before the confirm does.
        self._pending[job.request_id] = pending
        try:
            await self._publish(job)
        except BaseException:
            self._pending.pop(job.request_id, None)
            raise
        log.info("job submitted", kind=kind, model=model, server=server, reason=reason)
        return pending

    def answered(self, event: Event) -> PendingJob | None:
        """The job `event` ends, if it is a final event for one of ours."""
        if event.kind not in FINAL_KINDS:
            return None
        return self._pending.pop(event.request_id, None)

    def pending(self, kind: JobKind, *, server: str | None = None) -> set[str]:
        """Canonical names of the models with a job of `kind` for `server` (None: the one
        server) still unanswered."""
        return {
            p.key for p in self._pending.values() if p.job.kind == kind and p.job.server == server
        }

    def expire(self) -> list[PendingJob]:
        """Forget jobs unanswered for too long (their answer was lost, say in a failover)."""
        cutoff = self._clock() - self._answer_timeout_s
        expired = [p for p in self._pending.values() if p.submitted_at < cutoff]
        for pending in expired:
            del self._pending[pending.job.request_id]
        return expired
