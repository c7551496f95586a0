"""`/metrics`: parses with prometheus_client's own parser and its numbers match the database."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from bot.web.app import create_app
from core import jobs
from core.db import session_scope
from core.dbclock import db_now
from core.job_progress import JobPhase, JobProgress
from core.job_results import JobResult, SampleResult, StoredImage, TrainingResult
from core.models import Job, LLMUsage, Worker
from core.settings import Settings
from tests.helpers.profile import make_test_settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(settings: Settings, token: str | None = None) -> Samples:
    client = TestClient(create_app(settings))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = client.get("/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def finish_after(settings: Settings, job_id: int, seconds: float, result: JobResult | None) -> None:
    """Claim, finish, and make the claim-to-finish span exactly `seconds` long."""
    lease = jobs.claim(settings, job_id, "w-online@test")
    assert lease is not None
    jobs.finish(settings, lease, result)
    with session_scope(settings) as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(started_at=db_now(-seconds), finished_at=db_now())
        )


def some_history(settings: Settings) -> dict[str, int]:
    ids: dict[str, int] = {}
    sample = jobs.submit(settings, kind="sample", params={"prompt": "a dog"})
    finish_after(
        settings, sample.id, 2.0, SampleResult(images=[StoredImage(id=i) for i in range(3)], blocked=1)
    )
    trained = jobs.submit(settings, kind="train")
    finish_after(settings, trained.id, 42.0, TrainingResult(steps=100, resumed_from=20, steps_per_s=2.0))
    running = jobs.submit(settings, kind="train")
    lease = jobs.claim(settings, running.id, "w-online@test")
    assert lease is not None
    jobs.report_progress(settings, lease, JobProgress(phase=JobPhase.TRAINING, step=10, steps_per_s=4.0))
    failed = jobs.submit(settings, kind="selftest")
    lease = jobs.claim(settings, failed.id, "w-gone@test")
    assert lease is not None
    jobs.fail(settings, lease, "broken")
    jobs.submit(settings, kind="sample", params={"prompt": "a cat"})  # stays queued
    ids.update(sample=sample.id, trained=trained.id, running=running.id)
    with session_scope(settings) as s:
        s.add(Worker(name="w-online@test", hostname="gpu-a", queues=settings.queue_name("train")))
        s.add(Worker(name="w-gone@test", hostname="gpu-b", queues=settings.queue_name("sample")))
        s.flush()
        s.execute(update(Worker).where(Worker.name == "w-gone@test").values(last_seen_at=db_now(-600)))
        s.add_all(
            [
                LLMUsage(model="gemma", prompt_tokens=100, completion_tokens=20, cost_usd=0.25),
                LLMUsage(model="gemma", prompt_tokens=50, completion_tokens=0, cost_usd=0.0, error="timeout"),
                LLMUsage(model="other", prompt_tokens=7, completion_tokens=3, cost_usd=0.5),
            ]
        )
    return ids


def test_metrics_match_the_database(db_settings: Settings) -> None:
    ids = some_history(db_settings)
    m = scrape(db_settings)
    assert value(m, "dreambot_database_up") == 1

    with session_scope(db_settings) as s:
        by_kind_state = {
            (k, st): n
            for k, st, n in s.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            )
        }
    assert by_kind_state  # the history above really is in the database
    for kind in ("train", "sample", "selftest"):
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            assert value(m, "dreambot_jobs", kind=kind, state=state) == by_kind_state.get((kind, state), 0)

    train_q, sample_q = db_settings.queue_name("train"), db_settings.queue_name("sample")
    assert value(m, "dreambot_queue_depth", queue=train_q, state="running") == 1
    assert value(m, "dreambot_queue_depth", queue=train_q, state="queued") == 0
    assert value(m, "dreambot_queue_depth", queue=sample_q, state="queued") == 1

    # The 42-second training is above the 30 s bucket and inside the 60 s one.
    hist = "dreambot_job_duration_seconds"
    assert value(m, f"{hist}_bucket", kind="train", state="succeeded", le="30.0") == 0
    assert value(m, f"{hist}_bucket", kind="train", state="succeeded", le="60.0") == 1
    assert value(m, f"{hist}_count", kind="train", state="succeeded") == 1
    assert value(m, f"{hist}_sum", kind="train", state="succeeded") == pytest.approx(42.0, abs=1.0)
    assert value(m, f"{hist}_bucket", kind="sample", state="succeeded", le="2.5") == 1
    assert value(m, f"{hist}_count", kind="selftest", state="failed") == 1

    assert (
        value(m, "dreambot_training_step_seconds", job_id=str(ids["running"]), worker="w-online@test") == 0.25
    )
    assert value(m, "dreambot_training_step_seconds_recent") == pytest.approx(0.5)  # 80 steps at 2/s
    # 3 stored + 1 blocked images in 2 seconds.
    assert value(m, "dreambot_sampling_images_per_second_recent") == pytest.approx(2.0, rel=0.05)

    assert value(m, "dreambot_worker_online", worker="w-online@test") == 1
    assert value(m, "dreambot_worker_online", worker="w-gone@test") == 0
    assert value(m, "dreambot_workers_online") == 1
    gone_age = value(
        m, "dreambot_worker_heartbeat_age_seconds", worker="w-gone@test", hostname="gpu-b", queues=sample_q
    )
    fresh_age = value(
        m, "dreambot_worker_heartbeat_age_seconds", worker="w-online@test", hostname="gpu-a", queues=train_q
    )
    assert fresh_age < gone_age and gone_age == pytest.approx(600, abs=30)

    assert value(m, "dreambot_llm_calls_total", model="gemma") == 2
    assert value(m, "dreambot_llm_errors_total", model="gemma") == 1
    assert value(m, "dreambot_llm_errors_total", model="other") == 0
    assert value(m, "dreambot_llm_tokens_total", model="gemma", type="prompt") == 150
    assert value(m, "dreambot_llm_tokens_total", model="gemma", type="completion") == 20
    assert value(m, "dreambot_llm_cost_usd_total", model="other") == 0.5
    assert value(m, "dreambot_llm_spend_today_usd") == pytest.approx(0.75)


def test_metrics_token_and_a_database_that_is_down(tmp_path: Any) -> None:
    settings = make_test_settings(tmp_path / "var", metrics_token="s3cret-token")
    client = TestClient(create_app(settings))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # Never migrated: the scrape still answers, and says the database is not usable.
    m = scrape(settings, token="s3cret-token")
    assert value(m, "dreambot_database_up") == 0
