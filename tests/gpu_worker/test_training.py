"""End to end on the tiny model: stored photos in, a loadable model out, class images cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from sqlalchemy import select

from core import jobs
from core.db import session_scope
from core.models import Job, Photo, Subject
from core.photos import PhotoRejected
from core.settings import Settings
from core.storage import sha256_bytes, storage_from_settings
from gpu_worker.runtime import run_job
from gpu_worker.training import run as training_run
from gpu_worker.training.job import train_subject
from gpu_worker.training.trainer import Hooks
from tests.helpers.training import FAST, Recorder, make_trained_subject_row


def _pipe(model_dir: Path):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        model_dir, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, seed: int = 3) -> torch.Tensor:  # type: ignore[no-untyped-def]
    out = pipe(
        "a photo of sks dog",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    return out.images


def test_lora_training_stores_a_loadable_lora(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    rec = Recorder()
    # A large rate so four steps visibly move the (zero-initialised) LoRA up-weights.
    result = train_subject(
        sqlite_settings, sid, {**FAST, "learning_rate": 5e-2}, Hooks(progress=rec)
    ).to_json()

    assert rec.phases() == ["loading", "class_images", "caching", "training", "saving"]
    assert rec.training_steps()[0] == 0 and rec.training_steps()[-1] == 4
    assert rec.training_steps() == sorted(rec.training_steps())
    storage = storage_from_settings(sqlite_settings)
    key = f"subjects/{sid}/lora.safetensors"
    data = storage.read_bytes(key)
    with session_scope(sqlite_settings) as s:
        subject = s.get(Subject, sid)
        assert subject is not None
        assert (subject.status, subject.artifact_key, subject.method) == ("ready", key, "lora")
        assert subject.artifact_sha256 == sha256_bytes(data) == result["artifact_sha256"]
    assert result["steps"] == 4 and result["resumed_from"] == 0 and result["checkpoints"] == [2]
    assert result["config"]["steps"] == 4 and result["config"]["resolution"] == 64  # the model's native size
    assert result["instance_prompt"] == "a photo of sks dog" and result["class_prompt"] == "a photo of dog"
    assert list(storage.list(f"subjects/{sid}/checkpoints/")) == []  # deleted on success

    tensors = load_safetensors(data)
    assert tensors and all(k.startswith("unet.") for k in tensors)
    assert any(k.endswith("attn1.to_q.lora.down.weight") for k in tensors)
    assert any(k.endswith("attn2.to_out.0.lora.up.weight") for k in tensors)
    kohya = load_safetensors(storage.read_bytes(result["kohya_key"]))
    assert all(k.startswith("lora_unet_") for k in kohya)
    suffixes = {k.split(".", 1)[1] for k in kohya}
    assert suffixes == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya

    pipe = _pipe(tiny_model_dir)
    before = _image(pipe)
    lora_file = Path(sqlite_settings.data_dir) / "lora.safetensors"
    lora_file.write_bytes(data)
    pipe.load_lora_weights(str(lora_file))
    after = _image(pipe)
    assert not torch.allclose(before, after, atol=1e-4)


def test_class_images_are_cached_per_class_and_topped_up(
    sqlite_settings: Settings, tiny_model_dir: Path
) -> None:
    cfg = {**FAST, "steps": 1}
    first = make_trained_subject_row(sqlite_settings, tiny_model_dir, name="rex")
    second = make_trained_subject_row(sqlite_settings, tiny_model_dir, name="fido", token="zwx", user="u2")
    third = make_trained_subject_row(sqlite_settings, tiny_model_dir, name="bello", token="zwx", user="u3")
    r1 = train_subject(sqlite_settings, first, cfg).to_json()
    r2 = train_subject(sqlite_settings, second, cfg).to_json()
    r3 = train_subject(sqlite_settings, third, {**cfg, "num_class_images": 3}).to_json()
    assert (r1["class_images_generated"], r2["class_images_generated"], r3["class_images_generated"]) == (
        2,
        0,
        1,
    )
    assert r3["class_images_used"] == 3
    keys = list(storage_from_settings(sqlite_settings).list("class_images/"))
    assert len(keys) == 3 and keys[0].endswith("-a-photo-of-dog/00000.jpg")


def test_full_finetune_writes_fp16_weights_that_load(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    from gpu_worker.training.export import load_full_weights

    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    cfg = {**FAST, "steps": 2, "method": "full", "train_text_encoder": True, "prior_preservation": False}
    result = train_subject(sqlite_settings, sid, cfg).to_json()
    assert result["artifact_key"] == f"subjects/{sid}/full.safetensors" and "kohya_key" not in result
    data = storage_from_settings(sqlite_settings).read_bytes(result["artifact_key"])
    tensors = load_safetensors(data)
    assert {k.split(".", 1)[0] for k in tensors} == {"unet", "text_encoder"}
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    pipe = _pipe(tiny_model_dir)
    path = Path(sqlite_settings.data_dir) / "full.safetensors"
    path.write_bytes(data)
    before = pipe.unet.conv_in.weight.detach().clone()
    load_full_weights(pipe, path)
    assert not torch.equal(before, pipe.unet.conv_in.weight)
    assert torch.allclose(pipe.unet.conv_in.weight, tensors["unet.conv_in.weight"].float())


def test_a_bad_stored_photo_fails_the_job_clearly(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    storage = storage_from_settings(sqlite_settings)
    with session_scope(sqlite_settings) as s:
        keys = sorted(s.scalars(select(Photo.storage_key).where(Photo.subject_id == sid)))
    good = storage.read_bytes(keys[0])
    storage.put(keys[1], good[: len(good) // 3])  # damaged after intake (a disk, a bad copy)
    with pytest.raises(PhotoRejected, match=r"1\.jpg"):
        train_subject(sqlite_settings, sid, FAST)

    job = jobs.submit(sqlite_settings, kind="train", subject_ids=[sid], params={"config": FAST})
    assert run_job(sqlite_settings, job.id, "w1", training_run) == "failed"
    with session_scope(sqlite_settings) as s:
        row = s.get(Job, job.id)
        subject = s.get(Subject, sid)
        assert row is not None and subject is not None
        assert row.error is not None and "1.jpg" in row.error and "truncated" in row.error
        assert subject.status == "failed" and subject.artifact_key is None
    assert storage.read_bytes(keys[0]) == good  # nothing else lost
    assert list(storage.list(f"subjects/{sid}/checkpoints/")) == []


def test_job_params_reach_the_trainer(sqlite_settings: Settings, tiny_model_dir: Path) -> None:
    sid = make_trained_subject_row(sqlite_settings, tiny_model_dir)
    params = {"subject_kind": "pet", "config": {**FAST, "steps": 2, "prior_preservation": False}}
    job = jobs.submit(sqlite_settings, kind="train", subject_ids=[sid], params=params)
    assert run_job(sqlite_settings, job.id, "w1", training_run) == "succeeded"
    with session_scope(sqlite_settings) as s:
        row = s.get(Job, job.id)
        assert row is not None and row.result is not None
        cfg = row.result["config"]
        assert (cfg["subject_kind"], cfg["steps"], cfg["random_flip"]) == ("pet", 2, True)  # the pet preset
        assert row.progress["phase"] == "saving"
    assert storage_from_settings(sqlite_settings).exists(f"subjects/{sid}/lora.safetensors")
