"""What a training shows besides the model: test pictures as the job's images, TensorBoard
event files, and x0 previews in the progress while it runs (tiny model, CPU)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sqlalchemy import select

from core import jobs
from core.db import session_scope
from core.image_codec import read_png_metadata
from core.job_progress import JobProgress
from core.models import Image, Job
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker.pipelines import make_scheduler
from gpu_worker.runtime import run_job
from gpu_worker.training import run as training_run
from gpu_worker.training.job import train_subject
from gpu_worker.training.trainer import Hooks
from tests.helpers.training import FAST, Recorder, make_trained_subject_row

QUICK = {**FAST, "steps": 2, "prior_preservation": False, "learning_rate": 5e-2}


def _run(settings: Settings, sid: int, config: dict) -> Job:  # type: ignore[type-arg]
    job = jobs.submit(settings, kind="train", subject_ids=[sid], params={"config": config})
    assert run_job(settings, job.id, "w1", training_run) == "succeeded"
    with session_scope(settings) as s:
        row = s.get(Job, job.id)
        assert row is not None
        s.expunge(row)
        return row


def _rows(settings: Settings, job_id: int) -> list[Image]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(Image).where(Image.job_id == job_id).order_by(Image.id)))
        s.expunge_all()
        return rows


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_a_finished_training_job_has_its_test_pictures(
    sqlite_settings: Settings, tiny_model_dir: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    cfg = {**QUICK, "validation_images": 3, "validation_steps": 2, "seed": 11}
    job = _run(sqlite_settings, sid, cfg)
    storage = storage_from_settings(sqlite_settings)
    rows = _rows(sqlite_settings, job.id)
    assert [r.storage_key for r in rows] == [f"jobs/{job.id}/{i}.png" for i in range(3)]
    assert [r.seed for r in rows] == [11, 12, 13]
    assert {(r.prompt, r.width, r.height) for r in rows} == {("a photo of sks dog", 64, 64)}
    assert job.result is not None and job.result["image_ids"] == [r.id for r in rows]
    assert job.progress["phase"] == "validating" and job.progress["step"] == 3
    first = storage.read_bytes(rows[0].storage_key)
    meta = read_png_metadata(first)
    assert (meta["prompt"], meta["seed"], meta["steps"]) == ("a photo of sks dog", "11", "2")

    # The pictures come from the trained weights: the stored LoRA in a fresh pipeline with
    # the same sampler and seed draws the same picture; the base model does not.
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("dpmpp_2m_karras", pipe.scheduler.config)

    def draw() -> np.ndarray:
        out = pipe("a photo of sks dog", num_inference_steps=2, generator=torch.Generator().manual_seed(11))
        return np.asarray(out.images[0], dtype=np.int16)

    base = draw()
    lora_file = Path(sqlite_settings.data_dir) / "lora.safetensors"
    lora_file.write_bytes(storage.read_bytes(f"subjects/{sid}/lora.safetensors"))
    pipe.load_lora_weights(str(lora_file))
    tuned = draw()
    stored = _pixels(first)
    assert np.abs(stored - tuned).max() <= 2
    assert np.abs(stored - base).mean() > 3 * max(np.abs(stored - tuned).mean(), 0.1)

    off = _run(sqlite_settings, sid, {**QUICK, "validation_images": 0})
    assert _rows(sqlite_settings, off.id) == []
    assert not [k for k in storage.list(f"jobs/{off.id}/") if k.endswith(".png")]
    assert off.result is not None and "validation" not in off.result


def test_tensorboard_events_are_stored_per_job_and_a_resumed_run_has_no_duplicates(
    sqlite_settings: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    config = {**QUICK, "steps": 6, "checkpoint_every": 3, "learning_rate": 1e-2}
    job = jobs.submit(sqlite_settings, kind="train", subject_ids=[sid], params={"config": config})
    real = jobs.report_progress

    def flaky(settings: Settings, lease: jobs.Lease, progress: JobProgress) -> None:
        if lease.attempt == 1 and progress.phase == "training" and (progress.step or 0) >= 5:
            raise ConnectionError("database connection dropped")
        real(settings, lease, progress)

    monkeypatch.setattr(jobs, "report_progress", flaky)
    assert run_job(sqlite_settings, job.id, "w1", training_run) == "queued"
    storage = storage_from_settings(sqlite_settings)
    prefix = f"jobs/{job.id}/tensorboard/"
    assert len(list(storage.list(prefix))) == 1  # the first attempt's curve is kept
    assert run_job(sqlite_settings, job.id, "w2", training_run) == "succeeded"

    keys = list(storage.list(prefix))
    assert len(keys) == 2 and all("events.out.tfevents" in k for k in keys)
    local = Path(sqlite_settings.data_dir) / "tensorboard" / f"job-{job.id}"
    assert sorted(p.name for p in local.iterdir()) == sorted(k.rsplit("/", 1)[1] for k in keys)
    copy = tmp_path / "tb"
    copy.mkdir()
    for k in keys:
        (copy / k.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(k))
    events = EventAccumulator(str(copy))
    events.Reload()
    assert {"train/loss", "train/lr", "train/steps_per_s"} <= set(events.Tags()["scalars"])
    # Attempt 1 logged 1..5 (5 failed to report but was logged), attempt 2 resumed at 3 and
    # purged the first attempt's points from there on: each step once, in order.
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(e.value) and e.value > 0 for e in events.Scalars("train/loss"))
    assert {round(e.value, 6) for e in events.Scalars("train/lr")} == {0.01}


def test_previews_appear_in_the_progress_while_training(
    sqlite_settings: Settings, tiny_model_dir: Path
) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    rec = Recorder()
    train_subject(sqlite_settings, sid, {**QUICK, "steps": 4, "preview_interval": 1e-6}, Hooks(progress=rec))
    training = [e for e in rec.events if e["phase"] == "training"]
    assert training[0]["step"] == 0 and "preview" not in training[0]  # nothing to show yet
    later = [e for e in training if e["step"] > 0]
    assert later and all("preview" in e for e in later)
    thumbs = [PILImage.open(io.BytesIO(base64.b64decode(e["preview"], validate=True))) for e in later]
    assert {(t.format, t.size) for t in thumbs} == {("JPEG", (128, 128))}
    assert later[0]["preview"] != later[-1]["preview"]  # it follows what the model learns

    quiet = Recorder()
    train_subject(sqlite_settings, sid, {**QUICK, "preview_interval": 0}, Hooks(progress=quiet))
    assert not any("preview" in e for e in quiet.events)
