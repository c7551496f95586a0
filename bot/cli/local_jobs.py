"""`dreambot generate` and `dreambot train`: the same job path as chat, run from a terminal.

The command submits an ordinary job (so quotas, validation and storage are the same),
then tries to claim it and run it in this process. If a running worker claimed it first,
the command follows the job's progress instead. Either way a tqdm bar shows progress and
the command prints where the results went.
"""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tqdm import tqdm

from core import jobs
from core.actions.actor import Actor
from core.actions.people import person
from core.db import session_scope
from core.enums import JobState, Platform
from core.errors import NotFound
from core.job_progress import JobProgress
from core.job_results import JobResult
from core.models import Image, Job, Subject
from core.settings import Settings
from core.storage import storage_from_settings

CLI_PLATFORM = Platform.CLI


def cli_user(settings: Settings) -> Actor:
    """The terminal's person: (cli, login name), created on first use; one command, no event."""
    login = getpass.getuser()
    with session_scope(settings) as s:
        return Actor(settings, person(s, CLI_PLATFORM, login, login).id, None, None)


def subject_ids_by_name(settings: Settings, user_id: int, names: list[str]) -> list[int]:
    ids = []
    with session_scope(settings) as s:
        for name in names:
            found = s.scalar(select(Subject.id).where(Subject.owner_id == user_id, Subject.name == name))
            if found is None:
                raise NotFound(f"You have no subject called “{name}” (train one with `dreambot train`).")
            ids.append(found)
    return ids


def run_or_follow(settings: Settings, job_id: int, body: Callable[[Any], JobResult]) -> Job:
    """Run job `job_id` here if nobody claimed it yet, else follow it; returns the final row."""
    from gpu_worker.runtime import run_job

    done = threading.Event()

    def run() -> None:
        run_job(settings, job_id, f"cli@{getpass.getuser()}", body)
        done.set()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    with tqdm(total=100, unit="%", desc=f"job #{job_id}", bar_format="{l_bar}{bar}| {postfix}") as bar:
        while True:
            job = jobs.get_job(settings, job_id)
            progress = JobProgress.read(job.progress)
            if progress.total:
                bar.n = round(100 * (progress.step or 0) / max(1, progress.total))
            bar.set_postfix_str(f"{job.status} {progress.phase or ''}".strip())
            if job.status in jobs.TERMINAL:
                bar.n = 100 if job.status == JobState.SUCCEEDED else bar.n
                bar.refresh()
                return job
            time.sleep(0.5)


def export_images(settings: Settings, job_id: int, out_dir: Path) -> list[Path]:
    """Copy the job's images out of storage into `out_dir`; returns the files written."""
    storage = storage_from_settings(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with session_scope(settings) as s:
        keys = list(s.scalars(select(Image.storage_key).where(Image.job_id == job_id).order_by(Image.id)))
    for key in keys:
        path = out_dir / f"job{job_id}-{Path(key).name}"
        path.write_bytes(storage.read_bytes(key))
        written.append(path)
    return written
