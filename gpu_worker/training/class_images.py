"""Class images for prior preservation, generated once and shared by every job.

Cached in storage per (base model, class prompt, resolution) under
`class_images/<hash>-<prompt slug>/<n>.jpg`: the second "dog" ever trained generates none,
and a job that wants more than the cache holds tops it up. Image n always comes from the
seed n, so two jobs topping up at once write identical files (storage writes are atomic).
Generation uses a half-precision pipeline with DPM-Solver++ 2M (20 steps: the quality of
the reference's 50 PNDM steps, for prior images that only need to be plausible members of
the class) and is dropped from memory before training starts.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from core.storage import Storage

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)
SEED_BASE = 7_000_000


@dataclass
class ClassImages:
    images: list[Image.Image]
    generated: int
    prefix: str
    generation_seconds: float = 0.0  # sampling only, without loading the pipeline


def cache_prefix(base_model: str, class_prompt: str, resolution: int) -> str:
    digest = hashlib.sha256(f"{base_model}\n{class_prompt}\n{resolution}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^a-z0-9]+", "-", class_prompt.lower()).strip("-")[:40] or "class"
    return f"class_images/{digest}-{slug}"


def image_key(prefix: str, n: int) -> str:
    return f"{prefix}/{n:05d}.jpg"


def ensure_class_images(
    storage: Storage,
    *,
    base_model: str,
    prompt: str,
    resolution: int,
    count: int,
    sample_steps: int = 20,
    guidance_scale: float = 7.5,
    batch_size: int = 8,
    progress: Callable[[int, int], None] = lambda done, total: None,
    settings: Settings | None = None,
) -> ClassImages:
    """Return `count` class images, generating only those the cache lacks.

    The cache is keyed by the base model's name; `settings` find a `storage:` model's
    local copy when images must be generated."""
    prefix = cache_prefix(base_model, prompt, resolution)
    present = set(storage.list(prefix + "/"))
    missing = [n for n in range(count) if image_key(prefix, n) not in present]
    seconds = 0.0
    if missing:
        log.info("generating %d class images for %r (%d cached)", len(missing), prompt, count - len(missing))
        seconds = _generate(
            storage,
            prefix,
            missing,
            base_model=base_model,
            prompt=prompt,
            resolution=resolution,
            sample_steps=sample_steps,
            guidance_scale=guidance_scale,
            batch_size=batch_size,
            progress=lambda done: progress(count - len(missing) + done, count),
            settings=settings,
        )
    images = []
    for n in range(count):
        with Image.open(io.BytesIO(storage.read_bytes(image_key(prefix, n)))) as im:
            images.append(im.convert("RGB"))
    return ClassImages(images=images, generated=len(missing), prefix=prefix, generation_seconds=seconds)


def _generate(
    storage: Storage,
    prefix: str,
    indices: list[int],
    *,
    base_model: str,
    prompt: str,
    resolution: int,
    sample_steps: int,
    guidance_scale: float,
    batch_size: int,
    progress: Callable[[int], None],
    settings: Settings | None = None,
) -> float:
    """Generate and store `indices`; returns the seconds spent sampling (not loading)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from gpu_worker.model_fetch import local_base_model
    from gpu_worker.pipelines import tune_for_gpu

    path = local_base_model(base_model, settings)  # again here: it refreshes a storage copy's last use
    cuda = torch.cuda.is_available()
    half = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    dtype = half if cuda else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    device = torch.device("cuda" if cuda else "cpu")
    pipe.to(device, dtype)
    if cuda:
        tune_for_gpu(pipe)  # as for sampling
    try:
        done, started = 0, time.monotonic()
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            generators = [torch.Generator(device=device).manual_seed(SEED_BASE + n) for n in batch]
            with torch.inference_mode():
                out = pipe(
                    [prompt] * len(batch),
                    height=resolution,
                    width=resolution,
                    num_inference_steps=sample_steps,
                    guidance_scale=guidance_scale,
                    generator=generators,
                )
            for n, image in zip(batch, out.images, strict=True):
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=95)
                storage.put(image_key(prefix, n), buf.getvalue())  # kept even if the job dies later
            done += len(batch)
            progress(done)
        return time.monotonic() - started
    finally:
        del pipe
        if cuda:
            torch.cuda.empty_cache()
