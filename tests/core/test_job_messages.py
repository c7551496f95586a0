"""The typed messages between workers and the bot: progress, results, training params,
and the job vocabularies stored as plain strings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect, select, text, update
from sqlalchemy.exc import StatementError

from core import jobs
from core.db import get_engine, session_scope
from core.enums import JobKind, JobState, Platform
from core.errors import IllegalTransition
from core.job_progress import JobPhase, JobProgress
from core.job_results import (
    SampleResult,
    SelftestResult,
    StoredImage,
    TrainingResult,
    TrainingValidation,
    read_result,
)
from core.models import Job, User
from core.settings import Settings
from core.train_config import TrainConfigError
from core.train_request import TrainRequest, parse_train_request


def test_progress_is_stored_without_empty_fields_and_reads_back() -> None:
    report = JobProgress(phase=JobPhase.TRAINING, step=10, total=400, steps_per_s=0.05, eta_s=None)
    stored = report.to_json()
    assert stored == {"phase": "training", "step": 10, "total": 400, "steps_per_s": 0.05}
    assert type(stored["phase"]) is str  # JSON, not the enum member
    assert JobProgress.read(stored) == report


def test_progress_writers_are_held_to_the_shape() -> None:
    with pytest.raises(ValidationError):
        JobProgress(phase="thinking")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        JobProgress.model_validate({"step": 1, "stepz": 2})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, JobProgress()),
        ({}, JobProgress()),
        ({"step": 3, "from_an_older_worker": True}, JobProgress(step=3)),  # unknown keys ignored
        ({"phase": "thinking", "step": 3, "total": 9}, JobProgress(step=3, total=9)),  # bad value dropped
        ({"step": "lots", "total": 9, "preview": "abc"}, JobProgress(total=9, preview="abc")),
    ],
)
def test_reading_progress_tolerates_old_or_damaged_rows(
    raw: dict[str, Any] | None, expected: JobProgress
) -> None:
    assert JobProgress.read(raw) == expected


def test_sample_result_round_trip_keeps_todays_keys() -> None:
    result = SampleResult(
        images=[StoredImage(id=5, key="jobs/1/0.png", seed=7, width=64, height=64)],
        image_ids=[5],
        seeds=[7, 8],
        blocked=1,
        prompt="a photo of zwx dog",
        steps=30,
        guidance_scale=7.5,
        scheduler="dpmpp_2m_karras",
        subject_ids=[2],
        notice="1 of the 2 pictures were held back",
        safety_checked=True,
    )
    stored = result.to_json()
    assert stored["images"] == [{"id": 5, "key": "jobs/1/0.png", "seed": 7, "width": 64, "height": 64}]
    assert (stored["blocked"], stored["negative_prompt"], stored["notice"]) == (1, "", result.notice)
    assert read_result("sample", stored) == result
    assert "notice" not in SampleResult(blocked=0).to_json()  # None is left out, as before


def test_training_result_round_trip_and_a_validation_that_stopped_early() -> None:
    stopped = TrainingValidation(
        prompt="a photo of zwx dog", steps=20, scheduler="ddim", error="stopped early"
    )
    result = TrainingResult(
        subject_id=3, artifact_key="subjects/3/full.safetensors", method="full", steps=4, validation=stopped
    )
    stored = result.to_json()
    assert "kohya_key" not in stored and "image_ids" not in stored and "images" not in stored["validation"]
    assert stored["validation"]["error"] == "stopped early"
    assert read_result(JobKind.TRAIN, stored) == result


def test_results_are_read_by_kind_and_tolerate_missing_keys() -> None:
    assert read_result("train", None) is None
    legacy = read_result("train", {"steps": 100, "resumed_from": 20, "steps_per_s": None})
    assert isinstance(legacy, TrainingResult) and (legacy.steps, legacy.artifact_key) == (100, "")
    seen = read_result("selftest", {"worker": "w1", "torch": None, "cuda_devices": [{"name": "H100"}]})
    assert isinstance(seen, SelftestResult) and seen.cuda_devices[0].name == "H100" and seen.torch is None
    with pytest.raises(ValueError):
        read_result("paint", {})


def test_train_request_keeps_the_stored_layout() -> None:
    request = TrainRequest(subject_kind="pet")
    assert request.to_params() == {"subject_kind": "pet"}
    assert TrainRequest(subject_kind="pet", config={"steps": 2}).to_params() == {
        "subject_kind": "pet",
        "config": {"steps": 2},
    }
    assert request.overrides() == {"subject_kind": "pet"}


def test_train_request_folds_settings_at_the_top_level_under_config() -> None:
    legacy = {"subject_id": 4, "subject_kind": "pet", "steps": 400, "lora_rank": 4, "note": "ignored"}
    request = parse_train_request({**legacy, "config": {"steps": 2, "subject_kind": "person"}})
    assert request.subject_id == 4
    assert request.config == {"steps": 2, "lora_rank": 4, "subject_kind": "person"}  # "config" wins
    assert request.overrides() == {"subject_kind": "person", "steps": 2, "lora_rank": 4}
    assert parse_train_request({"steps": 3}).overrides() == {"steps": 3}
    assert parse_train_request({"config": None}).overrides() == {}


def test_a_bad_train_request_says_what_is_wrong() -> None:
    with pytest.raises(TrainConfigError, match="subject_kind"):
        parse_train_request({"subject_kind": "dragon"})


def test_transitions_name_states_as_words() -> None:
    with pytest.raises(IllegalTransition, match="from 'succeeded' to 'running'"):
        jobs.check_transition(JobState.SUCCEEDED, JobState.RUNNING)


def test_enums_are_stored_as_their_plain_strings(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind=JobKind.SELFTEST)
    with session_scope(db_settings) as s:
        s.add(User(platform=Platform.WEB, platform_user_id="visitor", display_name="v"))
    with get_engine(db_settings).connect() as conn:
        raw = conn.execute(text("SELECT kind, status FROM jobs WHERE id = :id"), {"id": job.id}).one()
        platform = conn.execute(
            text("SELECT platform FROM users WHERE platform_user_id = 'visitor'")
        ).scalar()
    assert tuple(raw) == ("selftest", "queued") and platform == "web"
    assert all(type(v) is str for v in (*raw, platform))
    with session_scope(db_settings) as s:
        kind, status = s.execute(select(Job.kind, Job.status).where(Job.id == job.id)).one()
        assert (kind, status) == (JobKind.SELFTEST, JobState.QUEUED) and isinstance(status, JobState)
        assert s.scalar(select(User.id).where(User.platform == Platform.WEB)) is not None
    columns = {c["name"]: c["type"] for c in inspect(get_engine(db_settings)).get_columns("jobs")}
    assert "VARCHAR" in str(columns["status"]).upper() and "VARCHAR" in str(columns["kind"]).upper()


def test_an_unknown_state_is_refused(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest")
    with pytest.raises(StatementError), session_scope(db_settings) as s:
        s.execute(update(Job).where(Job.id == job.id).values(status="paused"))
    assert jobs.get_job(db_settings, job.id).status == JobState.QUEUED
