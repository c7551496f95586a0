"""The sweeper: makes sure no broker behaviour can lose or double-run a job.

- a job still `queued` and unclaimed `resend_after` seconds after its last send is sent
  again (the filesystem transport forgets, a broker restarted, submit could not send);
- a `running` job whose heartbeat is older than `lease_timeout` lost its worker: it is
  requeued and re-sent while attempts remain, else failed (or cancelled if asked).

Duplicate messages are harmless: `claim` lets exactly one through.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core import jobs
from core.db import rows_changed, session_scope
from core.dbclock import db_now
from core.enums import JobState
from core.models import Job
from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    resent: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def sweep(settings: Settings) -> SweepReport:
    """One pass. Safe to run from several processes at once (every change is conditional)."""
    report = SweepReport()
    _reclaim_stale(settings, report)
    _resend_unclaimed(settings, report)
    if report.requeued or report.failed or report.resent or report.cancelled:
        log.info("sweep: %s", report)
    return report


def _reclaim_stale(settings: Settings, report: SweepReport) -> None:
    with session_scope(settings) as session:
        stale = session.execute(
            select(Job.id, Job.attempt, Job.max_attempts, Job.cancel_requested).where(
                Job.status == JobState.RUNNING, Job.heartbeat_at < db_now(-settings.lease_timeout)
            )
        ).all()
    for job_id, attempt, max_attempts, cancel in stale:
        values: dict[str, Any]
        if cancel:
            new, values, bucket = JobState.CANCELLED, {"finished_at": db_now()}, report.cancelled
        elif attempt < max_attempts:
            new, values, bucket = JobState.QUEUED, {"worker": None, "sent_at": None}, report.requeued
        else:
            error = f"the worker stopped responding (attempt {attempt} of {max_attempts})"
            new, values, bucket = JobState.FAILED, {"error": error, "finished_at": db_now()}, report.failed
        with session_scope(settings) as session:
            if not _lock_unless_held(session, job_id):
                continue
            # Conditional on the attempt we saw: a worker that heartbeats in between wins.
            changed = rows_changed(
                session,
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.attempt == attempt,
                    Job.status == JobState.RUNNING,
                    Job.heartbeat_at < db_now(-settings.lease_timeout),
                )
                .values(status=new, **values),
            )
        if changed == 1:
            bucket.append(job_id)


def _lock_unless_held(session: Session, job_id: int) -> bool:
    """Lock the job's row, or say it is held by another session: a heartbeat in flight,
    or a cut host's session until the database drops it (see `core.db`). Waiting on such
    a lock would stall every other job's sweep; the next pass looks at this one again.
    (SQLite has no row locks: there the whole write simply queues.)"""
    held = select(Job.id).where(Job.id == job_id).with_for_update(skip_locked=True)
    return session.scalar(held) is not None


def _resend_unclaimed(settings: Settings, report: SweepReport) -> None:
    with session_scope(settings) as session:
        waiting = list(
            session.scalars(
                select(Job).where(
                    Job.status == JobState.QUEUED,
                    or_(Job.sent_at.is_(None), Job.sent_at < db_now(-settings.resend_after)),
                )
            )
        )
    for job in waiting:
        if jobs.send(settings, job):
            report.resent.append(job.id)


class SweeperThread(threading.Thread):
    """Runs `sweep` every `sweep_interval` seconds until `stop()`."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="dreambot-sweeper", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.sweep_interval):
            try:
                sweep(self.settings)
            except Exception:  # a database blip must not end the loop
                log.exception("sweep failed; trying again next interval")

    def stop(self) -> None:
        self._stop_event.set()
