"""`kill -9` of a real Celery worker mid-training: the next worker resumes from the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import jobs
from core.db import session_scope
from core.models import Job, Subject
from core.settings import Settings
from core.storage import storage_from_settings
from core.sweeper import SweeperThread
from tests.helpers.training import FAST, make_trained_subject_row
from tests.helpers.workers import WorkerProcess, wait_for, wait_job

pytestmark = pytest.mark.slow

# Enough steps after the first checkpoint that the kill lands mid-run, few enough that the
# rescuer finishes well inside its wait on a loaded 2-core machine (CI once saw 0.44 steps/s).
STEPS, EVERY = 60, 10


def test_killed_training_resumes_on_another_worker(
    sqlite_settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = sqlite_settings
    sid = make_trained_subject_row(settings, tiny_model_dir)
    storage = storage_from_settings(settings)
    config = {**FAST, "steps": STEPS, "checkpoint_every": EVERY, "progress_interval": 0.2}
    first = WorkerProcess(settings, "train", tmp_path, name="doomed")
    sweeper = SweeperThread(settings)
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        job = jobs.submit(settings, kind="train", subject_ids=[sid], params={"config": config})

        def past_first_checkpoint() -> bool:
            with session_scope(settings) as s:
                row = s.get(Job, job.id)
                step = (row.progress or {}).get("step", 0) if row is not None else 0
            return step > EVERY and any(storage.list(f"subjects/{sid}/checkpoints/"))

        wait_for(past_first_checkpoint, 240, interval=0.05, what="a checkpoint on the first worker")
        first.kill9()
        with session_scope(settings) as s:
            row = s.get(Job, job.id)
            assert row is not None and row.status == "running" and row.progress["step"] < STEPS
        sweeper.start()
        second = WorkerProcess(settings, "train", tmp_path, name="rescuer")
        done = wait_job(settings, job.id, timeout=300)
        assert done.status == "succeeded", second.log()
        assert done.result is not None
        assert done.attempt == 2 and done.worker == second.name
        assert done.result["steps"] == STEPS
        assert EVERY <= done.result["resumed_from"] < STEPS and done.result["resumed_from"] % EVERY == 0
        with session_scope(settings) as s:
            subject = s.get(Subject, sid)
            assert subject is not None and subject.status == "ready"
        assert storage.exists(f"subjects/{sid}/lora.safetensors")
        assert list(storage.list(f"subjects/{sid}/checkpoints/")) == []
    finally:
        sweeper.stop()
        first.stop()
        if second is not None:
            second.stop()
