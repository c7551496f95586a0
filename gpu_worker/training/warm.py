"""The train queue's warm-up, run by `gpu_worker.warmup` before the worker's first claim.

A job should find everything ready: the base model loaded and prepared for the usual run
(the deployment's default LoRA at the model's native size, with prior preservation), the
class-image drawing's kernels loaded, and the training step compiled and captured once —
compiled from scratch on the first host, loaded from the compile store (`resident`) on
every other one. The first job then reuses those very modules and their compiled UNet.
A warm-up trains a few steps on made-up photos; nothing of it is kept but the caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.settings import Settings
from core.train_config import build_config
from gpu_worker import compile_store
from gpu_worker.training import class_images, resident
from gpu_worker.training.prepare import Shape, prepare_models
from gpu_worker.training.step_runner import wants_compile

WARM_STEPS = 3
WARM_PHOTOS = 4


def _made_up(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def warm(settings: Settings, report: Callable[[str], None]) -> dict[str, Any]:
    """Warm what a training job needs; returns what was warmed (shown on the worker row)."""
    cfg = build_config(deployment_file=settings.train_config)
    shape = Shape.planned(cfg)
    report(f"loading {settings.base_model} for training")
    comps = resident.components(settings, settings.base_model, shape)
    cfg = cfg.resolved(n_photos=WARM_PHOTOS, resolution=comps.native_resolution)
    assert cfg.resolution is not None
    device = torch.device(shape.device_type)
    prepare_models(comps, cfg, shape.weight_dtype, device)
    done: dict[str, Any] = {
        "model": settings.base_model,
        "resolution": cfg.resolution,
        "warmed": ["base model"],
    }
    if device.type == "cuda":
        report("loading the class-image kernels")
        done["class_batch"] = _warm_class_images(comps, cfg.resolution, cfg.class_batch_size)
        done["warmed"].append("class images")
    if wants_compile(cfg.compile, device):
        report("compiling the training step (minutes the first time on a fleet, seconds after)")
        done.update(_warm_step(settings, comps, cfg, shape))
        done["warmed"].append("training step")
    return done


def _warm_class_images(comps: Any, resolution: int, asked: int | None) -> int:
    """One sampler step at the real batch size: the kernels a job's batches use get loaded."""
    size = class_images.batch_for(resolution, asked)
    pipe = class_images.pipeline(comps, comps.model_path, torch.device("cuda"))
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # as when drawing for a job
    try:
        class_images.draw_batch(pipe, "a photo", list(range(size)), resolution, 1, 7.5)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        del pipe
        torch.cuda.empty_cache()
    return size


def _warm_step(settings: Settings, comps: Any, cfg: Any, shape: Shape) -> dict[str, Any]:
    from gpu_worker.training.trainer import Hooks, Trainer

    store = compile_store.store_from_settings(settings)
    key = resident.compile_key(settings.base_model, cfg, shape, prior=True)
    loaded = store.load(key) if store is not None else 0
    started = time.monotonic()
    quick = cfg.model_copy(update=dict(steps=WARM_STEPS, checkpoint_every=10**9, preview_interval=0))
    size = cfg.resolution
    trainer = Trainer(
        quick, comps, _made_up(2, size, 1), _made_up(1, size, 2), "a photo of sks thing", "a photo"
    )
    trainer.train(Hooks())
    graphed = trainer.runner.graph is not None
    trainer.release_optimizer()
    seconds = round(time.monotonic() - started, 1)
    saved = store.save(key) if store is not None else 0
    return {
        "compile_seconds": seconds,
        "cuda_graph": graphed,
        "artifacts": {"loaded": loaded, "saved": saved},
    }
