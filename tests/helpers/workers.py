"""Real Celery worker subprocesses for tests (`dreambot worker`), and waiting for events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select

from core.db import session_scope
from core.models import Job, Worker
from core.settings import Settings
from tests.helpers.profile import settings_env

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 60, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll until `predicate()` is truthy and return it. The timeout only bounds a hang;
    tests assert the order of events, never durations."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """`dreambot worker` in its own process group, so a kill takes its pool children too."""

    def __init__(self, settings: Settings, queues: str, log_dir: Path, name: str | None = None) -> None:
        self.settings = settings
        self.name = f"{name or 'w' + uuid.uuid4().hex[:6]}@test"
        self.log_path = log_dir / f"{self.name}.log"
        cmd = [sys.executable, "-m", "bot.cli", "worker", "--queues", queues, "--name", self.name]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            with session_scope(self.settings) as s:
                return s.scalar(select(Worker.name).where(Worker.name == self.name)) is not None

        wait_for(ready, timeout, what=f"worker {self.name} to start")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def wait_job(
    settings: Settings,
    job_id: int,
    states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    timeout: float = 120,
) -> Job:
    def done() -> Job | None:
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            return job if job is not None and job.status in states else None

    return wait_for(done, timeout, what=f"job {job_id} to reach {states}")
