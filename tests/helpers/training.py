"""Photos, subjects and a fast config for training tests on the tiny model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.db import session_scope
from core.job_progress import JobProgress
from core.models import Subject, User
from core.photos import store_subject_photos
from core.settings import Settings

# A few steps, two class images made with two sampler steps, a checkpoint every 2 steps,
# progress after every step (so hooks see each one), no validation pictures at the end
# (tests of those ask for them).
FAST: dict[str, Any] = dict(
    steps=4,
    num_class_images=2,
    class_sample_steps=2,
    class_batch_size=2,
    checkpoint_every=2,
    progress_interval=1e-6,
    lr_warmup_steps=0,
    validation_images=0,
)


def photo_bytes(seed: int, size: tuple[int, int] = (320, 256), fmt: str = "JPEG") -> bytes:
    """A photo-like picture: a smooth background and a few coloured shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for k in range(4):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = [x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if k % 2 else draw.rectangle)(box, fill=colour)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def make_trained_subject_row(
    settings: Settings,
    model_dir: Path,
    *,
    name: str = "rex",
    token: str = "sks",
    class_noun: str = "dog",
    n_photos: int = 3,
    photo_seed: int = 0,
    user: str = "u1",
) -> int:
    """A user (reused), a subject and its stored photos; returns the subject id."""
    with session_scope(settings) as s:
        owner = s.query(User).filter_by(platform="test", platform_user_id=user).one_or_none()
        if owner is None:
            owner = User(platform="test", platform_user_id=user, display_name=user)
            s.add(owner)
            s.flush()
        subject = Subject(
            owner_id=owner.id, name=name, token=token, class_noun=class_noun, base_model=str(model_dir)
        )
        s.add(subject)
        s.flush()
        subject_id = subject.id
    photos = [(photo_bytes(photo_seed + i), f"photo{i}.jpg") for i in range(n_photos)]
    store_subject_photos(settings, subject_id, photos)
    return subject_id


class Recorder:
    """Hooks.progress that records every report (and can raise at a chosen step)."""

    def __init__(self, stop_at: int | None = None, exc: type[BaseException] = RuntimeError) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop_at, self.exc = stop_at, exc

    def __call__(self, report: JobProgress) -> None:
        values = report.to_json()
        self.events.append(values)
        if (
            self.stop_at is not None
            and values.get("phase") == "training"
            and values.get("step", 0) >= self.stop_at
        ):
            raise self.exc(f"stopped at step {values['step']}")

    def phases(self) -> list[str]:
        out: list[str] = []
        for e in self.events:
            if not out or out[-1] != e["phase"]:
                out.append(e["phase"])
        return out

    def training_steps(self) -> list[int]:
        return [e["step"] for e in self.events if e["phase"] == "training"]
