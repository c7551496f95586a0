"""Checkpoints: an interrupted or requeued training resumes where it stopped, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from core import jobs
from core.db import session_scope
from core.job_progress import JobProgress
from core.models import Job
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker.runtime import JobCancelled, run_job
from gpu_worker.training import run as training_run
from gpu_worker.training.job import train_subject
from gpu_worker.training.trainer import Hooks
from tests.helpers.training import FAST, Recorder, make_trained_subject_row

# Previews at every report: their extra forward pass must not change the trajectory.
TEN = {**FAST, "steps": 10, "checkpoint_every": 5, "learning_rate": 1e-2, "preview_interval": 1e-6}


class Crash(RuntimeError):
    """Stands in for a worker dying mid-training (no chance to save anything)."""


def _lora(settings: Settings, sid: int) -> dict[str, torch.Tensor]:
    return load_safetensors(storage_from_settings(settings).read_bytes(f"subjects/{sid}/lora.safetensors"))


def _checkpoints(settings: Settings, sid: int) -> list[str]:
    return list(storage_from_settings(settings).list(f"subjects/{sid}/checkpoints/"))


def test_resume_after_a_crash_is_exact(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    straight = make_trained_subject_row(sqlite_settings, tiny_model_dir, name="a")
    resumed = make_trained_subject_row(
        sqlite_settings, tiny_model_dir, name="b", user="u2"
    )  # same photos+token
    train_subject(sqlite_settings, straight, {**TEN, "preview_interval": 0})  # no previews at all

    first = Recorder(stop_at=7, exc=Crash)
    with pytest.raises(Crash):
        train_subject(sqlite_settings, resumed, TEN, Hooks(progress=first))
    # A crash saves nothing: the last periodic checkpoint (step 5) is what is left.
    assert [k.rsplit("/", 1)[1] for k in _checkpoints(sqlite_settings, resumed)] == ["step-0000005.pt"]

    second = Recorder()
    result = train_subject(sqlite_settings, resumed, TEN, Hooks(progress=second)).to_json()
    assert result["resumed_from"] == 5 and result["steps"] == 10
    steps = second.training_steps()
    assert steps[0] == 5 and steps == sorted(steps) and steps[-1] == 10  # never goes back
    a, b = _lora(sqlite_settings, straight), _lora(sqlite_settings, resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert _checkpoints(sqlite_settings, resumed) == []


def test_cancel_leaves_a_checkpoint_at_the_current_step(
    sqlite_settings: Settings, tiny_model_dir: Path
) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    cfg = {**TEN, "checkpoint_every": 100}
    with pytest.raises(JobCancelled):
        train_subject(sqlite_settings, sid, cfg, Hooks(progress=Recorder(stop_at=3, exc=JobCancelled)))
    assert [k.rsplit("/", 1)[1] for k in _checkpoints(sqlite_settings, sid)] == ["step-0000003.pt"]
    result = train_subject(sqlite_settings, sid, cfg).to_json()
    assert (result["resumed_from"], result["steps"]) == (3, 10)


def test_a_checkpoint_from_another_config_is_not_used(
    sqlite_settings: Settings, tiny_model_dir: Path
) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    with pytest.raises(Crash):
        train_subject(sqlite_settings, sid, TEN, Hooks(progress=Recorder(stop_at=6, exc=Crash)))
    assert _checkpoints(sqlite_settings, sid)
    result = train_subject(sqlite_settings, sid, {**TEN, "learning_rate": 2e-2}).to_json()
    assert result["resumed_from"] == 0 and result["steps"] == 10


def test_a_requeued_job_resumes_from_its_checkpoint(
    sqlite_settings: Settings, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real job path: the database blinks at step 7 (a transient error), the runtime
    requeues the job, and the next attempt continues from step 5."""
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    job = jobs.submit(sqlite_settings, kind="train", subject_ids=[sid], params={"config": TEN})
    real = jobs.report_progress
    seen: list[tuple[int, int]] = []

    def flaky(settings: Settings, lease: jobs.Lease, progress: JobProgress) -> None:
        if progress.phase == "training":
            seen.append((lease.attempt, progress.step or 0))
            if lease.attempt == 1 and (progress.step or 0) >= 7:
                raise ConnectionError("database connection dropped")
        real(settings, lease, progress)

    monkeypatch.setattr(jobs, "report_progress", flaky)
    assert run_job(sqlite_settings, job.id, "w1", training_run) == "queued"
    assert run_job(sqlite_settings, job.id, "w2", training_run) == "succeeded"
    with session_scope(sqlite_settings) as s:
        row = s.get(Job, job.id)
        assert row is not None and row.result is not None
        assert (row.attempt, row.result["resumed_from"], row.result["steps"]) == (2, 5, 10)
    second = [step for attempt, step in seen if attempt == 2]
    assert second[0] == 5 and second == sorted(second) and second[-1] == 10
