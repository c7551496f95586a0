"""The train queue's warm-up, run by `gpu_worker.warmup` before the worker's first claim.

For now it only loads the training base model's components once (the files come off
disk or the model cache, the imports are done), so a train worker, too, reports
`warming` then `ready`. The training graph warm-up (compile, capture, class-image shapes)
replaces this body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.settings import Settings


def warm(settings: Settings, report: Callable[[str], None]) -> dict[str, Any]:
    """Warm what a training job needs; returns what was warmed (shown on the worker row)."""
    from gpu_worker.training.models import load_components

    report(f"loading {settings.base_model} for training")
    comps = load_components(settings.base_model, settings)
    return {"model": settings.base_model, "warmed": ["base model"], "resolution": comps.native_resolution}
