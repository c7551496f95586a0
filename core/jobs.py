"""The job lifecycle: submit, claim, heartbeat, progress, outputs, finish, cancel.

    queued -> running -> succeeded | failed | cancelled
    running -> queued          (worker lost, attempts remain: the sweeper)
    queued  -> cancelled | failed

A worker wins a job with one conditional UPDATE and gets a `Lease` (the attempt number).
Every later write names that lease and is accepted only while it is current, so a
worker that was cut off and comes back can no longer write. Times are the database's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import queue as queues
from core.db import rows_changed, session_scope
from core.dbclock import db_now
from core.enums import JobKind, JobState
from core.errors import IllegalTransition, LeaseLost, NotFound
from core.job_progress import JobProgress
from core.job_results import JobResult
from core.logs import bind_job
from core.models import Image, Job, Subject
from core.quotas import check_job_quota
from core.settings import Settings

log = logging.getLogger(__name__)

TRANSITIONS: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {JobState.RUNNING, JobState.CANCELLED, JobState.FAILED},
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED},
    JobState.SUCCEEDED: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check_transition(old: JobState, new: JobState) -> None:
    """Raise `IllegalTransition` unless the lifecycle allows `old -> new`."""
    if new not in TRANSITIONS.get(old, set()):
        raise IllegalTransition(f"a job cannot go from '{old}' to '{new}'")


@dataclass(frozen=True)
class Lease:
    """A worker's current claim on a job: valid while the job's attempt equals `attempt`."""

    job_id: int
    attempt: int
    worker: str


# -- submit ---------------------------------------------------------------------------


def submit(
    settings: Settings,
    *,
    kind: JobKind | str,
    params: dict[str, Any] | None = None,
    owner_id: int | None = None,
    subject_ids: Iterable[int] = (),
    conversation_id: int | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    progress: JobProgress | None = None,
) -> Job:
    """Create a job (quota-checked, idempotent on its key), then send its task by name.

    The one way any part starts a job. If sending fails the row stays `queued` and the
    sweeper sends it later, so a broker hiccup never loses work. `progress`: what the card
    shows until the worker reports (a training's photo strip).
    """
    if kind not in queues.TASK_NAMES:
        raise ValueError(f"unknown job kind {str(kind)!r}")
    kind = JobKind(kind)
    params = dict(params or {})
    with session_scope(settings) as session:
        existing = _by_key(session, idempotency_key)
        if existing is not None:
            return existing
        if owner_id is not None:
            check_job_quota(session, settings, owner_id, kind, int(params.get("n", 1)))
        job = Job(
            kind=kind,
            queue=queue or settings.queue_name(queues.DEFAULT_QUEUE[kind]),
            owner_id=owner_id,
            conversation_id=conversation_id,
            params=params,
            progress=progress.to_json() if progress else {},
            idempotency_key=idempotency_key,
            max_attempts=max_attempts or settings.max_attempts,
        )
        ids = list(subject_ids)
        if ids:
            job.subjects = list(session.scalars(select(Subject).where(Subject.id.in_(ids))))
            job.subject_id = ids[0]
        session.add(job)
        try:
            session.flush()
        except IntegrityError:
            # Lost a race on the idempotency key: the other insert is the job.
            session.rollback()
            existing = _by_key(session, idempotency_key)
            if existing is None:
                raise
            return existing
    send(settings, job)
    return job


def _by_key(session: Session, key: str | None) -> Job | None:
    if key is None:
        return None
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def send(settings: Settings, job: Job) -> bool:
    """Send (or re-send) the task for `job` and note when; False if the broker failed."""
    with bind_job(job.id):
        try:
            queues.send_job(settings, job.kind, job.id, job.queue)
        except Exception as exc:  # broker down: the sweeper will try again
            log.warning("job %s: could not reach the broker (%s); the sweeper will resend", job.id, exc)
            return False
        with session_scope(settings) as session:
            session.execute(update(Job).where(Job.id == job.id).values(sent_at=db_now()))
        log.info("job %s: %s sent to queue %s", job.id, job.kind, job.queue)
    return True


def get_job(settings: Settings, job_id: int) -> Job:
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"There is no job #{job_id}.")
        return job


# -- worker side: claim and write under a lease ---------------------------------------


def claim(settings: Settings, job_id: int, worker: str) -> Lease | None:
    """Try to take job `job_id`. Exactly one of many concurrent claimants gets a lease.

    Returns None, quietly, when the job is gone, already claimed, finished or cancelled
    (a duplicate or late message).
    """
    with session_scope(settings) as session:
        changed = rows_changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobState.QUEUED, Job.cancel_requested.is_(False))
            .values(
                status=JobState.RUNNING,
                attempt=Job.attempt + 1,
                worker=worker,
                claimed_at=db_now(),
                heartbeat_at=db_now(),
                started_at=db_now(),
            )
            .execution_options(synchronize_session=False),
        )
        if changed != 1:
            _cancel_if_requested(session, job_id)
            return None
        attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    assert attempt is not None
    return Lease(job_id=job_id, attempt=attempt, worker=worker)


def _cancel_if_requested(session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobState.QUEUED, Job.cancel_requested.is_(True))
        .values(status=JobState.CANCELLED, finished_at=db_now())
    )


def _write(settings: Settings, lease: Lease, **values: Any) -> None:
    """UPDATE the job only while `lease` is current; raise `LeaseLost` otherwise."""
    with session_scope(settings) as session:
        _write_in(session, lease, **values)


def _write_in(session: Session, lease: Lease, **values: Any) -> None:
    changed = rows_changed(
        session,
        update(Job)
        .where(Job.id == lease.job_id, Job.attempt == lease.attempt, Job.status == JobState.RUNNING)
        .values(heartbeat_at=db_now(), **values)
        .execution_options(synchronize_session=False),
    )
    if changed != 1:
        raise LeaseLost(f"job {lease.job_id}: attempt {lease.attempt} is no longer current")


def heartbeat(settings: Settings, lease: Lease) -> bool:
    """Keep the lease alive. Returns True when someone asked to cancel the job."""
    with session_scope(settings) as session:
        _write_in(session, lease)
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == lease.job_id)))


def report_progress(settings: Settings, lease: Lease, progress: JobProgress) -> None:
    """Replace the job's progress (each report is whole, not a change to the last one)."""
    _write(settings, lease, progress=progress.to_json())


def add_image(
    settings: Settings,
    lease: Lease,
    *,
    storage_key: str,
    seed: int,
    prompt: str,
    width: int,
    height: int,
) -> int:
    """Record one output image, only while the lease is current. Returns the image id."""
    with session_scope(settings) as session:
        _write_in(session, lease)  # locks the job row until commit on PostgreSQL
        image = Image(
            job_id=lease.job_id,
            storage_key=storage_key,
            seed=seed,
            prompt=prompt,
            width=width,
            height=height,
        )
        session.add(image)
        session.flush()
        return image.id


def finish(settings: Settings, lease: Lease, result: JobResult | None = None) -> None:
    """running -> succeeded."""
    stored = result.to_json() if result is not None else {}
    _write(settings, lease, status=JobState.SUCCEEDED, result=stored, finished_at=db_now())


def fail(settings: Settings, lease: Lease, error: str, *, retry: bool = False) -> JobState:
    """running -> queued (when `retry` and attempts remain) or failed. Returns the new state."""
    with session_scope(settings) as session:
        job = session.get(Job, lease.job_id)
        retrying = retry and job is not None and job.attempt < job.max_attempts
        if retrying:
            _write_in(session, lease, status=JobState.QUEUED, worker=None, error=error[:2000])
        else:
            _write_in(session, lease, status=JobState.FAILED, error=error[:2000], finished_at=db_now())
    if retrying and job is not None:
        send(settings, job)
    return JobState.QUEUED if retrying else JobState.FAILED


def mark_cancelled(settings: Settings, lease: Lease) -> None:
    """running -> cancelled, by the worker that noticed `cancel_requested`."""
    _write(settings, lease, status=JobState.CANCELLED, finished_at=db_now())


# -- anyone: cancel --------------------------------------------------------------------


def request_cancel(settings: Settings, job_id: int) -> JobState:
    """Cancel a queued job at once, or ask the running worker to stop. Returns the state."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"There is no job #{job_id}.")
        if job.status in TERMINAL:
            return job.status
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        changed = rows_changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobState.QUEUED)
            .values(status=JobState.CANCELLED, finished_at=db_now()),
        )
        return JobState.CANCELLED if changed == 1 else JobState.RUNNING


def transition(settings: Settings, job_id: int, new: JobState, **values: Any) -> None:
    """An administrative state change (dashboard retry/fail), checked against the lifecycle."""
    with session_scope(settings) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"There is no job #{job_id}.")
        check_transition(job.status, new)
        changed = rows_changed(
            session,
            update(Job).where(Job.id == job_id, Job.status == job.status).values(status=new, **values),
        )
        if changed != 1:
            raise IllegalTransition(f"job {job_id} changed state while being moved to {new!r}")
