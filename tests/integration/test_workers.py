"""A selftest job through real Celery worker subprocesses on each broker; a worker killed mid-job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

from core import jobs, migrate
from core.db import dispose_engines, session_scope
from core.models import Job
from core.settings import Settings
from core.sweeper import SweeperThread
from tests.helpers.profile import RABBIT_URL, make_test_settings, redis_url
from tests.helpers.workers import WorkerProcess, wait_for, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def fs_settings(sqlite_settings: Settings) -> Settings:
    return sqlite_settings


@pytest.fixture
def redis_settings(tmp_path: Path, redis_ready: None) -> Iterator[Settings]:
    url = redis_url()
    settings = make_test_settings(tmp_path / "var", broker_url=url)
    migrate.upgrade(settings)
    yield settings
    dispose_engines()
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"*{settings.queue_prefix}*"):
        client.delete(key)


@pytest.fixture
def amqp_settings(tmp_path: Path, rabbitmq_ready: None) -> Iterator[Settings]:
    settings = make_test_settings(tmp_path / "var", broker_url=RABBIT_URL)
    migrate.upgrade(settings)
    yield settings
    dispose_engines()
    with Connection(RABBIT_URL) as conn:  # durable test queues would pile up across runs
        for base in ("train", "sample"):
            conn.default_channel.queue_delete(settings.queue_name(base))


@pytest.mark.parametrize("broker", ["fs_settings", "redis_settings", "amqp_settings"])
def test_selftest_through_a_real_worker(broker: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    settings: Settings = request.getfixturevalue(broker)
    worker = WorkerProcess(settings, "sample", tmp_path)
    try:
        worker.wait_ready()
        job = jobs.submit(settings, kind="selftest", idempotency_key=f"test:{uuid.uuid4().hex}:0")
        done = wait_job(settings, job.id)
        assert done.status == "succeeded", worker.log()
        assert done.result is not None
        assert done.result["worker"] == worker.name
        assert done.result["torch"] and "cuda_devices" in done.result
        assert done.attempt == 1 and done.progress["phase"] == "selftest"
    finally:
        worker.stop()


def test_killed_worker_job_is_requeued_and_finished_by_another(fs_settings: Settings, tmp_path: Path) -> None:
    settings = fs_settings
    first = WorkerProcess(settings, "sample", tmp_path, name="doomed")
    sweeper = SweeperThread(settings)
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        job = jobs.submit(settings, kind="selftest", params={"sleep": 4})

        def running_on_first() -> bool:
            with session_scope(settings) as s:
                row = s.get(Job, job.id)
                return row is not None and row.status == "running" and bool(row.progress)

        wait_for(running_on_first, 60, what="the job to run on the first worker")
        first.kill9()
        sweeper.start()
        second = WorkerProcess(settings, "sample", tmp_path, name="rescuer")
        done = wait_job(settings, job.id, timeout=120)
        assert done.status == "succeeded", second.log()
        assert done.attempt == 2
        assert done.result is not None and done.result["worker"] == second.name
        assert done.worker == second.name
    finally:
        sweeper.stop()
        first.stop()
        if second is not None:
            second.stop()


def test_doctor_reports_each_part(fs_settings: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers.profile import settings_env

    env = settings_env(fs_settings)
    env["DREAMBOT_LLM_BASE_URL"] = "http://127.0.0.1:9/v1"  # nothing listens: a warning, not a failure
    doctor = [sys.executable, "-m", "bot.cli", "doctor", "--selftest-timeout", "90"]
    before = subprocess.run(doctor, env=env, capture_output=True, text=True, timeout=120)
    assert before.returncode == 1
    assert "no worker is running" in before.stdout

    worker = WorkerProcess(fs_settings, "train,sample", tmp_path)
    try:
        worker.wait_ready()
        after = subprocess.run(doctor, env=env, capture_output=True, text=True, timeout=180)
    finally:
        worker.stop()
    lines = {line.split()[1]: line for line in after.stdout.splitlines() if line.strip()}
    assert after.returncode == 0, after.stdout + after.stderr
    for part in ("database", "broker", "storage", "workers"):
        assert lines[part].startswith("ok"), lines[part]
    assert lines["llm"].startswith("warn") and "DREAMBOT_LLM_BASE_URL" in lines["llm"]
    assert "gpu" in lines and worker.name in lines["gpu"]  # the selftest ran on our worker
