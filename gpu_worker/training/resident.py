"""A training worker's base model, kept between jobs.

Loading SD 1.5 takes seconds and compiling its training graph takes minutes; a worker that
kept neither would pay both in every job. So the worker keeps one base model here: the
first job (or the warm-up at worker start, `warm`) loads and prepares it, later jobs of the
same shape (`prepare.Shape`: method, LoRA rank and targets, precision …) reuse the very
same modules, so their compiled UNet is reused too (`step_runner` keeps it per module).

What is not reused: a model whose weights a job changed (a full fine-tune), or one a job
left mid-way (an error); then the next job loads it again. A job of another shape (a
person's rank-16 LoRA after a pet's rank 8) loads a fresh copy as well.

Training's compiled artifacts are kept in storage (`compile_store`, per base model and run
shape), so a new host or a restarted worker finds them and only traces, not compiles.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from core.settings import Settings
from core.train_config import TrainConfig
from gpu_worker.training.models import Components, load_components
from gpu_worker.training.prepare import Shape

log = logging.getLogger(__name__)
_lock = threading.Lock()
_kept: Components | None = None


def components(settings: Settings, base_model: str, shape: Shape) -> Components:
    """The base model's parts for a run of `shape`: the kept ones when they fit, else loaded."""
    global _kept
    with _lock:
        kept = _kept
        if kept is not None and kept.base_model == base_model:
            prepared = getattr(kept.unet, "_dreambot_shape", None)
            if prepared in (None, shape):
                return kept
            log.info("the kept base model is prepared for another kind of run: loading it again")
        _kept = None  # let the old copy go before loading a new one
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _kept = load_components(base_model, settings)
        return _kept


def discard() -> None:
    """Forget the kept model (its weights were trained, or a job stopped half-way)."""
    global _kept
    with _lock:
        _kept = None


def keep_after(cfg: TrainConfig, finished: bool) -> None:
    """After a job: a LoRA run leaves the base untouched and is kept; anything else is not."""
    if not finished or cfg.method != "lora":
        discard()


def compile_key(base_model: str, cfg: TrainConfig, shape: Shape, prior: bool) -> Any:
    """Which stored compile artifacts a run of this shape uses."""
    from gpu_worker.compile_store import CompileKey
    from gpu_worker.training.step_runner import COMPILE_OPTIONS

    options = {
        "shape": [str(v) for v in vars(shape).values()],
        "resolution": cfg.resolution,
        "batch": cfg.train_batch_size * (2 if prior else 1),
        "snr_gamma": cfg.snr_gamma is not None,
        "offset_noise": cfg.offset_noise > 0,
        "compile": {k: str(v) for k, v in COMPILE_OPTIONS.items()},
    }
    return CompileKey(purpose="train", base_model=base_model, options=options)
