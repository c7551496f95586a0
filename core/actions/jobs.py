"""Jobs as people and admins see them: status, recent jobs, cancel, and (admin) retry.

The lifecycle itself (submit, claim, finish, cancel requests) is `core.jobs`; a person's
actions here first check that the job is theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from core import jobs as lifecycle
from core.actions.actor import Actor
from core.actions.ownership import own_job
from core.db import session_scope
from core.enums import JobKind, JobState
from core.errors import NotFound, Refused
from core.job_progress import JobProgress
from core.models import Job
from core.settings import Settings

RECENT = 5  # jobs in "your recent jobs"
RETRYABLE = (JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobView:
    id: int
    kind: JobKind
    status: JobState
    progress: JobProgress
    error: str | None
    image_ids: list[int]  # not hidden for review


class NotRetryable(Refused):
    """Only a failed or cancelled job can be retried."""


def _view(job: Job) -> JobView:
    images = [i.id for i in job.images if i.hidden_at is None]
    return JobView(job.id, job.kind, job.status, JobProgress.read(job.progress), job.error, images)


def status(actor: Actor, job_id: int) -> JobView:
    with session_scope(actor.settings) as session:
        return _view(own_job(session, actor.user_id, job_id))


def recent(actor: Actor) -> list[JobView]:
    """The person's latest jobs, newest first."""
    with session_scope(actor.settings) as session:
        rows = session.scalars(
            select(Job).where(Job.owner_id == actor.user_id).order_by(Job.id.desc()).limit(RECENT)
        )
        return [_view(j) for j in rows]


def cancel(actor: Actor, job_id: int) -> str:
    """Cancel one of the person's jobs: `cancelled`, `running` (asked to stop) or its end state."""
    with session_scope(actor.settings) as session:
        own_job(session, actor.user_id, job_id)
    return lifecycle.request_cancel(actor.settings, job_id)


# -- an admin's ----------------------------------------------------------------------------


def cancel_any(settings: Settings, job_id: int) -> str:
    """An admin cancels anyone's job (the same states as `cancel`)."""
    return lifecycle.request_cancel(settings, job_id)


def retry(settings: Settings, job_id: int) -> int:
    """Submit a copy of a failed or cancelled job (the original stays as it was); the new id.
    The copy is checked like any job: quotas and a blocked owner refuse it."""
    with session_scope(settings) as session:
        job = session.scalar(select(Job).where(Job.id == job_id).options(selectinload(Job.subjects)))
        if job is None:
            raise NotFound(f"There is no job #{job_id}.")
        if job.status not in RETRYABLE:
            raise NotRetryable(f"Only failed or cancelled jobs can be retried ({job.status}).")
        kind, params, owner_id, conversation_id = (
            job.kind,
            dict(job.params or {}),
            job.owner_id,
            job.conversation_id,
        )
        subject_ids = [s.id for s in job.subjects] or ([job.subject_id] if job.subject_id else [])
    new = lifecycle.submit(
        settings,
        kind=kind,
        params=params,
        owner_id=owner_id,
        subject_ids=subject_ids,
        conversation_id=conversation_id,
    )
    return new.id
