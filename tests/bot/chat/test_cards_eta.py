"""A training card says how long is left, in words, once the trainer has measured its pace."""

from __future__ import annotations

from typing import Any

import pytest

from bot.chat.cards import JobSnapshot, render_card
from core.job_progress import JobProgress


def training_card(progress: dict[str, Any]) -> str:
    job = JobSnapshot(
        7, "train", "running", JobProgress.model_validate(progress), {}, None, None, 0, subject_name="Rex"
    )
    return render_card(job).text


@pytest.mark.parametrize(
    ("eta_s", "device", "words"),
    [
        (7300.0, "cpu", "about 2 h left on this CPU"),
        (5400.0, "cpu", "about 1.5 h left on this CPU"),
        (45000.0, "cpu", "about 12 h left on this CPU"),
        (720.0, "cuda", "about 12 min left"),
        (20.0, "cuda", "less than a minute left"),
        (75.0, None, "about 1 min left"),
    ],
)
def test_eta_in_words(eta_s: float, device: str | None, words: str) -> None:
    progress = {"phase": "training", "step": 10, "total": 400, "steps_per_s": 0.05, "eta_s": eta_s}
    if device is not None:
        progress["device"] = device
    assert training_card(progress) == f"🧠 Training Rex — 2% (training), {words}"


def test_no_eta_before_the_first_measured_steps() -> None:
    assert training_card({"phase": "loading"}) == "🧠 Training Rex — starting… (loading)"
    assert training_card({"phase": "training", "step": 0, "total": 400, "eta_s": None}) == (
        "🧠 Training Rex — 0% (training)"
    )
    class_images = {"phase": "class_images", "step": 1, "total": 2, "eta_s": 30.0}
    assert training_card(class_images) == "🧠 Training Rex — 50% (class images)"
