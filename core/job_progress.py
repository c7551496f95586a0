"""A running job's progress: written by GPU workers through their lease, read by the job
card, the playground, the CLI's progress bar, the agent's job view and the metrics.

One model for every kind of job; which fields a report fills depends on its phase:

    sampling / saving / selftest           step, total (denoising steps, images)
    loading / caching                      nothing else yet
    class_images / validating              step, total (pictures made)
    training                               step, total, loss, steps_per_s, eta_s, device
    downloading (a base model, any kind)   step, total (bytes), speed (B/s), eta (s)

and `preview` (a small JPEG, base64 or a data: URL) may come with any of them — a queued
training's is the strip of crops it will learn from.
"""

from __future__ import annotations

from enum import StrEnum

from core.stored import StoredMessage


class JobPhase(StrEnum):
    LOADING = "loading"
    DOWNLOADING = "downloading"
    CLASS_IMAGES = "class_images"
    CACHING = "caching"
    TRAINING = "training"
    SAMPLING = "sampling"
    SAVING = "saving"
    VALIDATING = "validating"
    SELFTEST = "selftest"


class JobProgress(StoredMessage):
    """What `jobs.progress` holds (see the module doc for which phase fills what)."""

    phase: JobPhase | None = None
    step: int | None = None
    total: int | None = None
    preview: str | None = None
    # training
    loss: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None  # from the measured pace, once there is one
    device: str | None = None  # "cpu", "cuda", …: the card says "on this CPU"
    # downloading
    speed: int | None = None  # bytes per second
    eta: int | None = None  # seconds
