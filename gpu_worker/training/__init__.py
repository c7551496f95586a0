"""DreamBooth training on the GPU worker (LoRA or full UNet fine-tune, prior preservation,
resumable from checkpoints). The Celery task `gpu_worker.train` calls `run(ctx)`.

Importing this package is cheap: torch and diffusers load when a training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.job_results import TrainingResult
    from gpu_worker.runtime import JobContext


def run(ctx: JobContext) -> TrainingResult:
    from gpu_worker.training.job import run as run_job

    return run_job(ctx)
