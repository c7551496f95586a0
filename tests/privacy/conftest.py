"""Fixtures for the privacy tests: the scripted LLM server and helpers that play a worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy import update

from bot.chat.service import Origin, Upload
from core import jobs
from core.db import session_scope
from core.job_results import SampleResult, TrainingResult
from core.models import Job, Subject
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.photos import jpeg, png


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def with_llm(settings: Settings, fake: FakeLLM, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        llm_base_url=fake.url, llm_api_key=SecretStr("sk-test"), llm_max_retries=0
    )
    values.update(overrides)
    return settings.model_copy(update=values)


def speaker(user: str, event: str, *, thread: str = "T1", name: str = "") -> Origin:
    return Origin("slack", user, name or user, channel_id="C1", thread_id=thread, event_id=event)


def photos(n: int, seed: int = 0) -> list[Upload]:
    return [Upload(f"p{i}.jpg", jpeg(seed + i)) for i in range(n)]


def finish_training(settings: Settings, job_id: int) -> int:
    """What a training worker leaves behind: a checkpoint, the model, a ready subject."""
    lease = jobs.claim(settings, job_id, "w")
    assert lease is not None
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.subject_id is not None
        subject_id = job.subject_id
    storage = storage_from_settings(settings)
    storage.put(f"subjects/{subject_id}/checkpoints/step-0000100.pt", b"checkpoint")
    key = f"subjects/{subject_id}/lora.safetensors"
    sha = storage.put(key, b"weights")
    with session_scope(settings) as s:
        s.execute(
            update(Subject)
            .where(Subject.id == subject_id)
            .values(status="ready", artifact_key=key, artifact_sha256=sha)
        )
    jobs.finish(settings, lease, TrainingResult(subject_id=subject_id, artifact_key=key))
    return subject_id


def finish_sample(settings: Settings, job_id: int, n: int = 2) -> list[int]:
    """What a sampling worker leaves behind: n PNGs and their image rows."""
    lease = jobs.claim(settings, job_id, "w")
    assert lease is not None
    storage = storage_from_settings(settings)
    prompt = str(jobs.get_job(settings, job_id).params.get("prompt", ""))
    ids = []
    for i in range(n):
        key = f"jobs/{job_id}/{i}.png"
        storage.put(key, png(job_id * 10 + i))
        ids.append(
            jobs.add_image(settings, lease, storage_key=key, seed=i, prompt=prompt, width=64, height=64)
        )
    jobs.finish(settings, lease, SampleResult(image_ids=ids))
    return ids
