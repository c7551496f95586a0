"""`dreambot up` keeps its workers: a killed worker comes back and its job still succeeds,
SIGTERM stops everything it started, and a second `up` after a `kill -9` of the first
never runs two workers of one name. Real `dreambot up` subprocesses, real Celery workers,
the tiny model."""

from __future__ import annotations

import os
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from core import jobs
from core.db import session_scope
from core.models import Job, Worker
from core.settings import Settings
from tests.helpers.training import FAST, make_trained_subject_row
from tests.helpers.up_process import UpProcess, worker_groups
from tests.helpers.workers import wait_for, wait_job

pytestmark = pytest.mark.slow
HOST = socket.gethostname()


def on_tiny_model(settings: Settings, model_dir: Path) -> Settings:
    return settings.model_copy(update={"base_model": str(model_dir)})


def wait_running(settings: Settings, job_id: int, worker: str) -> None:
    def running() -> bool:
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            return job is not None and job.status == "running" and job.worker == worker

    wait_for(running, 180, interval=0.05, what=f"job {job_id} to run on {worker}")


def test_a_killed_train_worker_comes_back_and_its_job_succeeds(
    sqlite_settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = on_tiny_model(sqlite_settings, tiny_model_dir)
    up = UpProcess(settings, tmp_path)
    try:
        up.wait_healthy()
        sid = make_trained_subject_row(settings, tiny_model_dir)
        job = jobs.submit(settings, kind="train", subject_ids=[sid], params={"config": FAST})
        name = f"train@{HOST}"
        wait_running(settings, job.id, name)
        victim = up.worker("train")
        os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool child, as on an OOM kill

        def reported_missing() -> dict[str, object] | None:
            health = up.health() or {"missing": []}
            return next((m for m in health["missing"] if m["worker"] == name), None)

        missing = wait_for(reported_missing, 60, interval=0.05, what="/healthz to name the dead worker")
        assert missing["queues"] == ["train"] and missing["state"] in ("restarting", "starting")
        done = wait_job(settings, job.id, timeout=300)  # nobody starts a worker by hand
        assert done.status == "succeeded", up.output()[-3000:]
        assert done.attempt == 2 and done.worker == name
        assert up.worker("train").pid != victim.pid
        text = up.wait_output(f"worker {name}: ready again (restart 1)")
        exited = text.index(f"worker {name}: exited (killed by SIGKILL)")
        assert exited < text.index(f"worker {name}: ready again (restart 1)")
        assert up.wait_healthy()["missing"] == []
    finally:
        up.kill_everything()


def busy_sample_worker(settings: Settings, up: UpProcess) -> int:
    """A selftest that sleeps on the sample worker: Celery's warm shutdown waits for it."""
    job = jobs.submit(settings, kind="selftest", params={"sleep": 120})
    wait_running(settings, job.id, f"sample@{HOST}")
    return job.id


def test_sigterm_stops_every_worker_even_a_busy_one(sqlite_settings: Settings, tmp_path: Path) -> None:
    up = UpProcess(sqlite_settings, tmp_path)
    try:
        up.wait_healthy()
        busy_sample_worker(sqlite_settings, up)
        family = psutil.Process(up.proc.pid).children(recursive=True)
        assert len(family) >= 4  # two workers, each with its pool child
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(90) == 0, up.output()[-3000:]
        _gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"left behind: {alive}"
        assert up.lines()[-1] == "dreambot stopped"
    finally:
        up.kill_everything()


def test_after_a_killed_up_the_next_one_runs_one_worker_per_name(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings
    first = UpProcess(settings, tmp_path, label="first")
    second: UpProcess | None = None
    try:
        first.wait_healthy()
        busy_sample_worker(settings, first)
        leftover = first.worker("sample")
        first.proc.kill()  # kill -9: no clean-up runs in `dreambot up`
        first.proc.wait(30)
        assert leftover.is_running()  # busy: its warm shutdown outlives the launcher
        since = datetime.now(UTC).replace(tzinfo=None)
        second = UpProcess(settings, tmp_path, label="second")

        def registered_again() -> bool:
            with session_scope(settings) as s:
                started = dict(s.execute(select(Worker.name, Worker.started_at)).all())
            return all(started.get(f"{q}@{HOST}", since) > since for q in ("train", "sample"))

        wait_for(registered_again, 180, interval=0.2, what="the second up's workers to register")
        for queue in ("train", "sample"):
            assert len(worker_groups(settings, f"{queue}@{HOST}")) == 1, queue
        assert not leftover.is_running() or leftover.status() == psutil.STATUS_ZOMBIE
        assert f"worker sample@{HOST}: stopped the one an earlier dreambot left running" in second.output()
    finally:
        first.kill_everything()
        if second is not None:
            second.kill_everything()
