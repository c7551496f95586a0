"""Celery tasks. Each takes a job id, returns quietly if the job is not ours to run."""

from __future__ import annotations

from celery import Task

from core.enums import JobKind
from core.queue import TASK_NAMES
from gpu_worker import selftest
from gpu_worker.app import app, settings
from gpu_worker.runtime import run_job


@app.task(name=TASK_NAMES[JobKind.SELFTEST], bind=True, soft_time_limit=settings.sample_time_limit)
def selftest_task(self: Task, job_id: int) -> str | None:
    return run_job(settings, job_id, self.request.hostname, selftest.run)


# Training and sampling import torch and diffusers: only inside the task, never at
# import or fork time, so the worker starts fast and a chat host never needs them.
@app.task(name=TASK_NAMES[JobKind.TRAIN], bind=True, soft_time_limit=settings.train_time_limit)
def train_task(self: Task, job_id: int) -> str | None:
    from gpu_worker.training import run as run_training

    return run_job(settings, job_id, self.request.hostname, run_training)


@app.task(name=TASK_NAMES[JobKind.SAMPLE], bind=True, soft_time_limit=settings.sample_time_limit)
def sample_task(self: Task, job_id: int) -> str | None:
    from gpu_worker.sampling import run as run_sampling

    return run_job(settings, job_id, self.request.hostname, run_sampling)
