"""What a finished job leaves in `jobs.result`, one model per kind of job.

Written once by the worker's job body (`gpu_worker/sampling.py`, `gpu_worker/training/
job.py`, `gpu_worker/selftest.py`) through `core.jobs.finish`; read by delivery and the
job card (a safety notice, how many pictures were held back), the metrics (pace of
trainings and samplings), `dreambot doctor` (what a worker sees), the CLI and the
dashboard (the whole result, as JSON). `read_result` picks the model by the job's kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from core.enums import JobKind
from core.stored import StoredMessage


class StoredImage(StoredMessage):
    """One output picture: its `images` row, storage key and seed."""

    id: int = 0
    key: str = ""
    seed: int = 0
    width: int | None = None  # sampling only
    height: int | None = None


class SampleResult(StoredMessage):
    images: list[StoredImage] = []  # stored (and so posted) pictures
    image_ids: list[int] = []
    seeds: list[int] = []  # every picture's, held back or not
    blocked: int = 0  # held back by the safety filter
    prompt: str = ""  # as drawn: with each subject's "token class"
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    subject_ids: list[int] = []
    notice: str | None = None  # posted with the pictures (some were held back)
    safety_checked: bool | None = None  # whether a safety checker looked at all


class TrainingValidation(StoredMessage):
    """The test pictures made after a training (best effort: `error` says what went wrong)."""

    prompt: str = ""
    steps: int | None = None
    scheduler: str | None = None
    blocked: int | None = None
    safety_checked: bool | None = None
    images: list[StoredImage] | None = None  # None: stopped before any were made
    error: str | None = None


class TrainingResult(StoredMessage):
    subject_id: int | None = None
    artifact_key: str = ""
    artifact_sha256: str = ""
    kohya_key: str | None = None  # LoRA only: a copy for kohya/A1111 tools
    kohya_sha256: str | None = None
    validation: TrainingValidation | None = None
    image_ids: list[int] | None = None  # the validation pictures (posted with the card)
    method: Literal["lora", "full"] | None = None
    steps: int = 0  # the step it ended at
    resumed_from: int = 0  # the checkpoint's step it started from
    checkpoints: list[int] = []
    final_loss: float | None = None
    instance_prompt: str = ""
    class_prompt: str = ""
    class_images_used: int = 0
    class_images_generated: int = 0
    precision: str | None = None
    seconds: float | None = None
    steps_per_s: float | None = None  # of this attempt's own steps
    config: dict[str, Any] = {}  # the resolved TrainConfig


class GpuInfo(StoredMessage):
    index: int = 0
    name: str = ""
    total_gb: float = 0.0
    free_gb: float = 0.0


class SelftestResult(StoredMessage):
    """What the worker that ran the self-test sees (`dreambot doctor` shows it)."""

    worker: str = ""
    attempt: int = 0
    hostname: str | None = None
    python: str | None = None
    free_disk_gb: float | None = None
    torch: str | None = None  # None: not installed
    cuda: str | None = None
    cuda_devices: list[GpuInfo] = []


JobResult = SampleResult | TrainingResult | SelftestResult
RESULT_TYPES: dict[JobKind, type[JobResult]] = {
    JobKind.SAMPLE: SampleResult,
    JobKind.TRAIN: TrainingResult,
    JobKind.SELFTEST: SelftestResult,
}


def read_result(kind: str, raw: Mapping[str, Any] | None) -> JobResult | None:
    """A job's stored result as its kind's model; None when there is none (yet)."""
    if raw is None:
        return None
    return RESULT_TYPES[JobKind(kind)].read(raw)
