"""Running one job inside a worker: claim, heartbeat, cancel, finish — around a body.

A task calls `run_job(settings, job_id, worker, body)`. `body(ctx)` does the work,
reporting `JobProgress` through `ctx.progress`, and returns its kind's result model
(`core.job_results`); everything about leases lives here, so tasks stay short.
Only errors named in `TRANSIENT` are retried (with the sweeper's backoff); anything else
fails the job with a message, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from core import jobs
from core.db import session_scope
from core.enums import JobKind, JobState
from core.errors import JobCancelled, LeaseLost, UserFacingError
from core.job_progress import JobProgress
from core.job_results import JobResult
from core.logs import bind_job
from core.models import Job
from core.settings import Settings
from gpu_worker.model_fetch import report_downloads_to

log = logging.getLogger(__name__)

# Errors worth another attempt on another worker: the database or a disk blinked.
TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, TimeoutError)


@dataclass
class JobContext:
    settings: Settings
    lease: jobs.Lease
    kind: JobKind
    params: dict[str, Any]
    owner_id: int | None
    subject_ids: list[int]
    _cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, report: JobProgress) -> None:
        """Write progress (also a heartbeat). Raises `JobCancelled` when asked to stop."""
        self.check_cancelled()
        jobs.report_progress(self.settings, self.lease, report)

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class _Heartbeat(threading.Thread):
    """Keeps the lease alive while the body runs; notices cancel requests."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.lease.job_id}", daemon=True)
        self.ctx = ctx
        self.done = threading.Event()

    def run(self) -> None:
        with bind_job(self.ctx.lease.job_id):
            self._beat()

    def _beat(self) -> None:
        while not self.done.wait(self.ctx.settings.heartbeat_interval):
            try:
                if jobs.heartbeat(self.ctx.settings, self.ctx.lease):
                    self.ctx._cancel.set()
            except LeaseLost:
                self.ctx._cancel.set()  # someone else owns it now: stop working
                return
            except Exception:  # a blip: the next beat may get through
                log.warning("job %s: heartbeat failed", self.ctx.lease.job_id, exc_info=True)


def _context(settings: Settings, lease: jobs.Lease) -> JobContext:
    with session_scope(settings) as session:
        job = session.get(Job, lease.job_id)
        assert job is not None
        return JobContext(
            settings=settings,
            lease=lease,
            kind=job.kind,
            params=dict(job.params or {}),
            owner_id=job.owner_id,
            subject_ids=[s.id for s in job.subjects],
        )


Body = Callable[[JobContext], JobResult]


def run_job(settings: Settings, job_id: int, worker: str, body: Body) -> str | None:
    """Claim `job_id` and run `body` under its lease. Returns the final state, or None
    when the job was not ours to run (gone, claimed elsewhere, finished: a duplicate)."""
    with bind_job(job_id):  # every line logged for this job carries its id
        lease = jobs.claim(settings, job_id, worker)
        if lease is None:
            log.info("job %s: not claimable (duplicate, finished or cancelled); skipping", job_id)
            return None
        ctx = _context(settings, lease)
        log.info("job %s: %s started on %s (attempt %s)", job_id, ctx.kind, worker, lease.attempt)
        beat = _Heartbeat(ctx)
        beat.start()
        try:
            state = _finish(settings, ctx, body)
        finally:
            beat.done.set()
        log.info("job %s: %s", job_id, state)
        return state


def _finish(settings: Settings, ctx: JobContext, body: Body) -> str:
    lease = ctx.lease
    try:
        try:
            with report_downloads_to(ctx.progress):  # a base model fetched first shows on the card
                result = body(ctx)
            ctx.check_cancelled()
            jobs.finish(settings, lease, result)
            return JobState.SUCCEEDED
        except JobCancelled:
            jobs.mark_cancelled(settings, lease)
            return JobState.CANCELLED
        except UserFacingError as exc:
            return jobs.fail(settings, lease, str(exc))
        except TRANSIENT as exc:
            log.warning("job %s: transient error, will retry: %s", lease.job_id, exc)
            return jobs.fail(settings, lease, f"{type(exc).__name__}: {exc}", retry=True)
        except Exception as exc:
            log.exception("job %s failed", lease.job_id)
            return jobs.fail(settings, lease, f"{type(exc).__name__}: {exc}")
    except LeaseLost:
        log.warning("job %s: lease %s lost; another worker owns it now", lease.job_id, lease.attempt)
        return "lost"
