"""Sampling jobs on the tiny pipeline, run in-process through `run_job` (CPU, 2-4 steps, 64x64)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from core import jobs
from core.db import dispose_engines, session_scope
from core.image_codec import read_png_metadata
from core.job_progress import JobProgress
from core.models import Image, Job
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker import pipelines, sampling
from gpu_worker.runtime import JobContext
from tests.helpers.lora import make_lora_bytes, make_subject, make_user, run_sample, sample_settings
from tests.helpers.workers import wait_for

FAST = {"steps": 2, "guidance_scale": 7.5}


@pytest.fixture(autouse=True)
def fresh_pipeline() -> Iterator[None]:
    pipelines.drop_residents()  # each test starts with no resident pipeline
    yield
    pipelines.drop_residents()


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    yield sample_settings(tmp_path / "var", tiny_model_dir)
    dispose_engines()


def pixels(settings: Settings, job: Job) -> list[np.ndarray]:
    store = storage_from_settings(settings)
    return [np.asarray(PILImage.open(io.BytesIO(store.read_bytes(i["key"])))) for i in job.result["images"]]


def test_images_are_stored_recorded_and_carry_their_parameters(settings: Settings) -> None:
    owner = make_user(settings)
    job = run_sample(settings, {"prompt": "a photo of the moon", "n": 2, "seed": 7, **FAST}, owner)
    assert job.status == "succeeded", job.error
    assert job.result["seeds"] == [7, 8] and job.result["blocked"] == 0
    assert [i["key"] for i in job.result["images"]] == [f"jobs/{job.id}/0.png", f"jobs/{job.id}/1.png"]
    with session_scope(settings) as s:
        rows = s.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.id)).all()
        assert [(r.seed, r.width, r.height, r.storage_key) for r in rows] == [
            (7, 64, 64, f"jobs/{job.id}/0.png"),  # the model's native size when none is asked
            (8, 64, 64, f"jobs/{job.id}/1.png"),
        ]
        assert job.result["image_ids"] == [r.id for r in rows]
    meta = read_png_metadata(storage_from_settings(settings).read_bytes(f"jobs/{job.id}/1.png"))
    assert meta["seed"] == "8" and meta["prompt"] == "a photo of the moon"
    assert meta["steps"] == "2" and meta["scheduler"] == "dpmpp_2m_karras" and meta["guidance_scale"] == "7.5"
    assert meta["base_model"] == settings.base_model and meta["size"] == "64x64"
    assert job.progress["phase"] == "saving"
    assert job.result["safety_checked"] is False  # the tiny model ships without a checker


def test_same_seed_same_pixels_and_another_seed_differs(settings: Settings) -> None:
    owner = make_user(settings)
    params = {"prompt": "a photo of a dog", "n": 2, "seed": 3, "scheduler": "euler_a", **FAST}
    first, again = (pixels(settings, run_sample(settings, params, owner)) for _ in range(2))
    other = pixels(settings, run_sample(settings, {**params, "seed": 4}, owner))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])  # two images of one job differ
    assert not np.array_equal(first[0], other[0])
    assert np.array_equal(first[1], other[0])  # seed 4 is the second image of the seed-3 batch


@pytest.mark.parametrize("scheduler", ["dpmpp_2m_karras", "euler_a", "ddim"])
def test_one_batched_unet_forward_per_step(settings: Settings, scheduler: str) -> None:
    resident = pipelines.get_resident(settings)
    batches: list[int] = []
    hook = resident.pipe.unet.register_forward_hook(lambda _m, args, _out: batches.append(args[0].shape[0]))
    try:
        job = run_sample(settings, {"prompt": "a dog", "n": 3, "steps": 3, "scheduler": scheduler})
    finally:
        hook.remove()
    assert job.status == "succeeded", job.error
    # Conditional and unconditional halves of all 3 images go through one call per step.
    assert batches == [6, 6, 6]


def test_progress_has_a_preview_and_is_throttled(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def spying(ctx: JobContext) -> dict[str, Any]:
        real = ctx.progress

        def progress(report: JobProgress) -> None:
            seen.append(report.to_json())
            real(report)

        ctx.progress = progress  # type: ignore[method-assign]
        return sampling.run(ctx)

    monkeypatch.setattr(sampling, "PROGRESS_INTERVAL", 0.0)
    run_sample(settings, {"prompt": "a dog", **{**FAST, "steps": 3}}, body=spying)
    assert [(p["step"], p["total"], p["phase"]) for p in seen] == [
        (1, 3, "sampling"),
        (2, 3, "sampling"),
        (3, 3, "sampling"),
        (3, 3, "saving"),
    ]
    with PILImage.open(io.BytesIO(base64.b64decode(seen[0]["preview"]))) as im:
        assert im.format == "JPEG" and max(im.size) <= 128

    seen.clear()
    monkeypatch.setattr(sampling, "PROGRESS_INTERVAL", 3600.0)  # far apart: the first step only
    run_sample(settings, {"prompt": "a dog", **{**FAST, "steps": 3}}, body=spying)
    assert [p["phase"] for p in seen] == ["sampling", "saving"]


def test_cancel_stops_between_steps_and_stores_nothing(settings: Settings) -> None:
    def cancel_at_first_step(ctx: JobContext) -> dict[str, Any]:
        real = ctx.progress

        def progress(report: JobProgress) -> None:
            real(report)
            if report.step == 1:
                jobs.request_cancel(settings, ctx.lease.job_id)
                wait_for(lambda: ctx.cancelled, what="the heartbeat to see the cancel")

        ctx.progress = progress  # type: ignore[method-assign]
        return sampling.run(ctx)

    job = run_sample(settings, {"prompt": "a dog", "steps": 4}, body=cancel_at_first_step)
    assert job.status == "cancelled"
    assert list(storage_from_settings(settings).list(f"jobs/{job.id}/")) == []


def test_variation_and_upscale_of_an_earlier_image(settings: Settings) -> None:
    owner = make_user(settings)
    first = run_sample(settings, {"prompt": "a photo of a cat", "seed": 1, **FAST}, owner)
    source_id = first.result["image_ids"][0]
    variation = run_sample(
        settings, {"variation_of": source_id, "strength": 0.5, "seed": 2, "steps": 4}, owner
    )
    assert variation.status == "succeeded", variation.error
    assert variation.result["prompt"] == "a photo of a cat"  # the earlier prompt, reused
    assert variation.result["images"][0]["width"] == 64
    assert not np.array_equal(pixels(settings, variation)[0], pixels(settings, first)[0])

    upscale = run_sample(settings, {"upscale_of": source_id, "steps": 4}, owner)
    assert upscale.status == "succeeded", upscale.error
    assert (upscale.result["images"][0]["width"], upscale.result["images"][0]["height"]) == (128, 128)
    assert pixels(settings, upscale)[0].shape == (128, 128, 3)
    meta = read_png_metadata(storage_from_settings(settings).read_bytes(upscale.result["images"][0]["key"]))
    assert meta["upscale_of"] == str(source_id) and meta["strength"] == "0.35"

    stranger = make_user(settings, "someone-else")
    refused = run_sample(settings, {"upscale_of": source_id, "steps": 4}, stranger)
    assert (
        refused.status == "failed"
        and refused.error == f"I can't find image #{source_id} among your pictures."
    )


def _checker_that_flags_everything() -> tuple[Any, Any]:
    """A real (tiny, random) diffusers safety checker whose thresholds flag every image."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    )
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0)  # every cosine similarity is above -10
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker.eval(), processor


@pytest.mark.parametrize("nsfw_filter", [True, False])
def test_blocked_images_are_counted_and_never_stored(
    tmp_path: Path, tiny_model_dir: Path, nsfw_filter: bool
) -> None:
    settings = sample_settings(tmp_path / "var", tiny_model_dir, nsfw_filter=nsfw_filter)
    resident = pipelines.get_resident(settings)
    resident.safety_checker, resident.pipe.feature_extractor = _checker_that_flags_everything()
    job = run_sample(settings, {"prompt": "a dog", "n": 2, **FAST})
    assert job.status == "succeeded", job.error
    stored = list(storage_from_settings(settings).list(f"jobs/{job.id}/"))
    assert job.result["safety_checked"] is nsfw_filter
    if nsfw_filter:
        assert job.result["blocked"] == 2 and job.result["images"] == [] and stored == []
        assert "safety filter" in job.result["notice"]
    else:  # the setting is off: the checker is not run
        assert job.result["blocked"] == 0 and len(stored) == 2 and "notice" not in job.result
    dispose_engines()


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"prompt": "a dog", "steps": 0}, "steps must be between 1 and 100"),
        ({"prompt": "a dog", "guidance_scale": 100}, "guidance must be between 1 and 20"),
        ({"prompt": "a dog", "width": 13}, "width must be a multiple of 8"),
        ({"prompt": "a dog", "n": 50}, "the number of images must be between 1 and 8"),
        ({"prompt": "a dog", "subject_ids": [999]}, "I can't find subject #999 among your subjects."),
        ({"prompt": "a dog", "variation_of": 999}, "I can't find image #999 among your pictures."),
    ],
)
def test_bad_requests_fail_with_a_friendly_message_before_the_gpu(
    settings: Settings, params: dict[str, Any], words: str
) -> None:
    job = run_sample(settings, params)
    assert job.status == "failed" and words in (job.error or "")
    assert pipelines._residents == {}  # the pipeline was never even loaded


def test_someone_elses_or_an_untrained_subject_is_refused(settings: Settings, tiny_model_dir: Path) -> None:
    owner, stranger = make_user(settings, "owner"), make_user(settings, "stranger")
    theirs = make_subject(settings, stranger, make_lora_bytes(tiny_model_dir, seed=1))
    untrained = make_subject(settings, owner, None, name="pending", token="sks", class_noun="cat")
    job = run_sample(settings, {"prompt": "a dog", **FAST}, owner, subject_ids=(theirs,))
    assert job.status == "failed" and job.error == f"I can't find subject #{theirs} among your subjects."
    job = run_sample(settings, {"prompt": "a cat", **FAST}, owner, subject_ids=(untrained,))
    assert job.status == "failed" and "isn't trained yet" in (job.error or "")
    assert pipelines._residents == {}
    with session_scope(settings) as s:
        assert s.scalars(select(Image)).all() == []
