"""Celery tasks. Each takes a job id, returns quietly if the job is not ours to run."""

from __future__ import annotations

from celery import Task

from core.queue import TASK_NAMES
from gpu_worker import selftest
from gpu_worker.app import app, settings
from gpu_worker.runtime import run_job


@app.task(name=TASK_NAMES["selftest"], bind=True, soft_time_limit=settings.sample_time_limit)
def selftest_task(self: Task, job_id: int) -> str | None:
    return run_job(settings, job_id, self.request.hostname, selftest.run)
