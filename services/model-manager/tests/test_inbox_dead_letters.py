"""A load or unload the scheduler dead-letters is answered at once, not left to expire."""

from __future__ import annotations

from corral_common.dead_letters import failure_for
from corral_common.messages import Event, Job
from corral_common.status_board import StatusBoard
from corral_model_manager.inbox import Inbox
from corral_model_manager.jobs import JobSubmitter, PendingJob


async def test_a_dead_lettered_job_is_answered_by_its_failure() -> None:
    published: list[Job] = []

    async def publish(job: Job) -> None:
        published.append(job)

    submitter = JobSubmitter("manager-1", publish, answer_timeout_s=300)
    answers: list[tuple[PendingJob, Event]] = []
    inbox = Inbox(StatusBoard(10.0), submitter, lambda p, e: answers.append((p, e)), lambda: None)
    pending = await submitter.submit("unload", "llama3.2", {"keep_alive": 0}, reason="idle")
    assert published == [pending.job]

    failed = failure_for(pending.job.request_id, "rejected", 1)
    assert inbox.dead_letter(failed)
    assert answers == [(pending, failed)]
    assert submitter.pending("unload") == set()
    # Another submitter's dead letter, or one answered already, is not ours.
    assert not inbox.dead_letter(failed)
