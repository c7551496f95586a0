"""What a job card says: one pure function from a job's state to text, a preview and buttons.

Every platform shows the same card (queued #2 → 37% with a preview → done), edited in place.
Buttons carry `custom_id`s that are short keys into the database (`db:v:123` = variations of
image 123), so they keep working after a restart.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from core.enums import JobKind, JobState
from core.job_progress import JobPhase, JobProgress
from core.job_results import JobResult, SampleResult

BUTTON_PREFIX = "db"
ACTIONS = {"v": "variations", "u": "upscale", "r": "reroll", "d": "delete", "x": "report"}
FORGET = "f"  # db:f:<token>: confirms a /forget (the token says what, for whom, until when)
MAX_BUTTONS = 25  # Discord: 5 rows of 5; Slack: one actions block


@dataclass(frozen=True)
class Button:
    label: str
    custom_id: str
    style: str = "secondary"  # primary | secondary | danger


@dataclass(frozen=True)
class JobSnapshot:
    """The fields of a job a card needs (read in one query by delivery)."""

    id: int
    kind: JobKind
    status: JobState
    progress: JobProgress
    params: dict[str, Any]
    result: JobResult | None
    error: str | None
    queue_position: int  # 1 = next; 0 when not queued
    subject_name: str | None = None
    # (token, class noun, name) of each subject, so cards say "Rex" rather than "zwx dog"
    subjects: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Card:
    text: str
    preview: bytes | None = None  # a small JPEG while running
    done: bool = False
    buttons: list[Button] = field(default_factory=list)


def button_id(action: str, target_id: int) -> str:
    return f"{BUTTON_PREFIX}:{action}:{target_id}"


def parse_button_id(custom_id: str) -> tuple[str, int] | None:
    """('variations', 123) for 'db:v:123'; None for anything else."""
    parts = custom_id.split(":")
    if len(parts) != 3 or parts[0] != BUTTON_PREFIX or parts[1] not in ACTIONS or not parts[2].isdigit():
        return None
    return ACTIONS[parts[1]], int(parts[2])


def forget_button_id(token: str) -> str:
    return f"{BUTTON_PREFIX}:{FORGET}:{token}"


def parse_forget_id(custom_id: str) -> str | None:
    """The token of a 'db:f:<token>' confirmation button; None for anything else."""
    prefix = f"{BUTTON_PREFIX}:{FORGET}:"
    return custom_id[len(prefix) :] or None if custom_id.startswith(prefix) else None


def image_buttons(job_id: int, image_ids: list[int]) -> list[Button]:
    """Per image: variations and upscale; per message: reroll and delete; then a Report
    button per image (anyone may press it: the image is hidden and goes to the admins).

    At most `MAX_BUTTONS`: with more than 7 images the per-image Report buttons become one
    that reports every image of the message (see `reports_whole_message`)."""
    buttons: list[Button] = []
    for n, image_id in enumerate(image_ids, start=1):
        buttons.append(Button(f"V{n}", button_id("v", image_id)))
        buttons.append(Button(f"U{n}", button_id("u", image_id)))
    buttons.append(Button("🎲 Reroll", button_id("r", job_id), "primary"))
    buttons.append(Button("🗑 Delete", button_id("d", job_id), "danger"))
    if not reports_whole_message(len(image_ids)):
        buttons += [Button(f"🚩{n}", button_id("x", i)) for n, i in enumerate(image_ids, start=1)]
    elif image_ids:
        buttons.append(Button("🚩 Report", button_id("x", image_ids[0])))
    return buttons


def reports_whole_message(n_images: int) -> bool:
    """True when a message of `n_images` has one Report button for all its images."""
    return 3 * n_images + 2 > MAX_BUTTONS


def _title(job: JobSnapshot) -> str:
    if job.kind == JobKind.TRAIN:
        return f"🧠 Training {job.subject_name or 'your subject'}"
    if job.kind == JobKind.SAMPLE:
        n = int(job.params.get("n", 1))
        what = "an upscale" if job.params.get("upscale_of") else f"{n} image{'s' * (n != 1)}"
        prompt = _named(str(job.params.get("prompt", "")), job.subjects)
        short = prompt if len(prompt) <= 80 else prompt[:77] + "…"
        return f"🎨 {what.capitalize()} of “{short}”" if short else f"🎨 {what.capitalize()}"
    return f"🔧 {job.kind} #{job.id}"


def _named(prompt: str, subjects: tuple[tuple[str, str, str], ...]) -> str:
    """The prompt as the person thinks of it: each subject's name instead of its token."""
    for token, class_noun, name in subjects:
        prompt = re.sub(rf"\b(a photo of )?{re.escape(token)}( {re.escape(class_noun)})?\b", name, prompt)
    return prompt


def _percent(progress: JobProgress) -> int | None:
    step, total = progress.step, progress.total
    if step is None or total is None:
        return None
    return max(0, min(100, round(100 * step / total))) if total > 0 else None


def time_left(progress: JobProgress) -> str | None:
    """Time left in words ("about 2 h left on this CPU") from the trainer's measured pace, once it has one."""
    eta = progress.eta_s
    if eta is None or not 0 < eta < float("inf") or progress.phase != JobPhase.TRAINING:
        return None
    where = " on this CPU" if progress.device == "cpu" else ""
    return f"{_duration_words(eta)} left{where}"


def _duration_words(seconds: float) -> str:
    if seconds < 60:
        return "less than a minute"
    if seconds < 3600:
        return f"about {max(1, round(seconds / 60))} min"
    hours = seconds / 3600
    rounded = round(hours * 2) / 2 if hours < 10 else round(hours)
    return f"about {rounded:g} h"


def _preview(progress: JobProgress) -> bytes | None:
    raw = progress.preview
    if not raw:
        return None
    try:
        return base64.b64decode(raw.split(",", 1)[-1], validate=True)
    except (binascii.Error, ValueError):
        return None


def _about(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _downloading(progress: JobProgress) -> str | None:
    """ "downloading the base model: 1.2GB of 4.3GB, 25MB/s, about 2 min left" (a worker
    fetching the model before its first job: gpu_worker/model_fetch.py)."""
    if progress.phase != JobPhase.DOWNLOADING:
        return None
    if progress.total is None:
        return "downloading the base model…"
    done, total, speed = progress.step or 0, progress.total, progress.speed or 0
    text = f"downloading the base model: {tqdm.format_sizeof(done, 'B')} of {tqdm.format_sizeof(total, 'B')}"
    if speed > 0:
        text += f", {tqdm.format_sizeof(speed, 'B/s')}"
        if progress.eta is not None:
            text += f", about {_about(progress.eta)} left"
    return text


def render_card(job: JobSnapshot) -> Card:
    title = _title(job)
    if job.status == JobState.QUEUED:
        place = f"queued #{job.queue_position}" if job.queue_position else "queued"
        return Card(f"{title} — {place}", preview=_preview(job.progress))  # a training: its photo crops
    if job.status == JobState.RUNNING and (fetching := _downloading(job.progress)) is not None:
        return Card(f"{title} — {fetching}")
    if job.status == JobState.RUNNING:
        pct = _percent(job.progress)
        phase = job.progress.phase
        detail = f"{pct}%" if pct is not None else "starting…"
        if phase and job.kind == JobKind.TRAIN:
            detail += f" ({phase.replace('_', ' ')})"
        if (left := time_left(job.progress)) is not None:
            detail += f", {left}"
        return Card(f"{title} — {detail}", preview=_preview(job.progress))
    if job.status == JobState.SUCCEEDED:
        return Card(f"{title} — done ✅{_done_detail(job)}", done=True)
    if job.status == JobState.CANCELLED:
        return Card(f"{title} — cancelled", done=True)
    return Card(f"{title} — failed: {job.error or 'something went wrong'}", done=True)


def _done_detail(job: JobSnapshot) -> str:
    if job.kind == JobKind.TRAIN:
        return " Now just ask, e.g. “put my " + (job.subject_name or "subject") + " on the moon”."
    blocked = job.result.blocked if isinstance(job.result, SampleResult) else 0
    return f" ({blocked} image{'s' * (blocked != 1)} held back by the safety filter)" if blocked else ""
