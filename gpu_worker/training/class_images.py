"""Class images for prior preservation, generated once and shared by every job.

Cached in storage per (base model, class prompt, resolution) under
`class_images/<hash>-<prompt slug>/<n>.jpg`: the second "dog" ever trained generates none,
and a job that wants more than the cache holds tops it up. Image n always comes from the
seed n, so two jobs topping up at once write identical files (storage writes are atomic).

Generation uses DPM-Solver++ 2M (20 steps: the quality of the reference's 50 PNDM steps,
for prior images that only need to be plausible members of the class), on the training's
own modules when the job passes them (no second load of the model; their LoRA layers, if
any, switched off), in half precision under autocast, as many images at once as free GPU
memory allows. cuDNN's autotuning stays off here: each shape runs a few times only, so
timing every algorithm first (seconds per shape) would cost more than it saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from core.storage import Storage

if TYPE_CHECKING:
    from core.settings import Settings
    from gpu_worker.training.models import Components

log = logging.getLogger(__name__)
SEED_BASE = 7_000_000
PER_IMAGE_BYTES = 0.5e9  # GPU memory one 512 px image takes while drawn (UNet with CFG, SDPA)
DECODE_CHUNK = 8


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
    batch_size: int | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    settings: Settings | None = None,
    comps: Components | None = None,
) -> ClassImages:
    """Return `count` class images, generating only those the cache lacks.

    The cache is keyed by the base model's name. `comps`: the job's own modules to draw
    with; else the model is loaded (`settings` find a `storage:` model's local copy)."""
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
            comps=comps,
        )
    images = []
    for n in range(count):
        with Image.open(io.BytesIO(storage.read_bytes(image_key(prefix, n)))) as im:
            images.append(im.convert("RGB"))
    return ClassImages(images=images, generated=len(missing), prefix=prefix, generation_seconds=seconds)


def batch_for(resolution: int, asked: int | None) -> int:
    """`asked`, else as many images as half the free GPU memory holds (≤ 32; 4 on a CPU)."""
    if asked:
        return asked
    if not torch.cuda.is_available():
        return 4
    free, _total = torch.cuda.mem_get_info()
    per_image = PER_IMAGE_BYTES * (resolution / 512) ** 2
    return int(max(1, min(32, free * 0.5 // per_image)))


@contextlib.contextmanager
def _adapters_off(*modules: Any) -> Iterator[None]:
    """LoRA layers a kept model still carries (an earlier job's) do nothing in here."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for module in modules for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def pipeline(comps: Components | None, path: str, device: torch.device) -> Any:
    """DPM-Solver++ over the job's modules, or over a fresh load of `path`."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    if comps is None:
        pipe = StableDiffusionPipeline.from_pretrained(
            path, safety_checker=None, requires_safety_checker=False
        )
        pipe.to(device, torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None)
    else:
        pipe = StableDiffusionPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
            scheduler=comps.noise_scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
        pipe.to(device)  # moves without casting: autocast computes in half
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cuda":  # as for sampling: cuDNN's NHWC kernels, no layout conversions
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    return pipe


def _compute_dtype(unet: Any) -> torch.dtype | None:
    """The half precision to draw in under autocast (None: plain fp32 on a CPU)."""
    if unet.dtype != torch.float32:
        return unet.dtype  # a half-precision base prepared for training
    if unet.device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def draw_batch(
    pipe: Any, prompt: str, seeds: list[int], resolution: int, steps: int, guidance_scale: float
) -> list[Image.Image]:
    """One batch of class images: image i from `seeds[i]`, decoded a few at a time."""
    device, half = pipe.unet.device, _compute_dtype(pipe.unet)
    autocast = torch.autocast(device.type, half or torch.bfloat16, enabled=half is not None)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    with torch.inference_mode(), autocast, _adapters_off(pipe.unet, pipe.text_encoder):
        latents = pipe(
            [prompt] * len(seeds), height=resolution, width=resolution, num_inference_steps=steps,
            guidance_scale=guidance_scale, generator=generators, output_type="latent",
        ).images  # fmt: skip
    vae, out = pipe.vae, []
    # The SD VAE overflows in fp16: it decodes in its own dtype (bf16 or fp32), a few at a time.
    with torch.inference_mode():
        for chunk in latents.split(DECODE_CHUNK):
            pixels = vae.decode(chunk.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            out += pipe.image_processor.postprocess(pixels.float(), output_type="pil")
    return out


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
    batch_size: int | None,
    progress: Callable[[int], None],
    settings: Settings | None = None,
    comps: Components | None = None,
) -> float:
    """Generate and store `indices`; returns the seconds spent sampling (not loading)."""
    from gpu_worker.model_fetch import local_base_model

    # The training's own parts when given; else read from this host (a hub model fetched
    # once, a storage copy refreshed in the cache's LRU).
    path = base_model if comps is not None else local_base_model(base_model, settings)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    pipe = pipeline(comps, path, device)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # one-off shapes: no per-shape autotuning
    size = batch_for(resolution, batch_size)
    try:
        done, started = 0, time.monotonic()
        for start in range(0, len(indices), size):
            batch = indices[start : start + size]
            images = draw_batch(
                pipe, prompt, [SEED_BASE + n for n in batch], resolution, sample_steps, guidance_scale
            )
            for n, image in zip(batch, images, strict=True):
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=95)
                storage.put(image_key(prefix, n), buf.getvalue())  # kept even if the job dies later
            done += len(batch)
            progress(done)
        return time.monotonic() - started
    finally:
        torch.backends.cudnn.benchmark = benchmark
        del pipe
        if cuda:
            torch.cuda.empty_cache()
