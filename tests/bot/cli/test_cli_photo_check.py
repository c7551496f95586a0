"""`dreambot train` shows the photo check as a table and asks before anything is queued;
"y" (or --yes) trains on the kept photos, anything else trains nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.cli import local_jobs
from bot.cli.main import app
from core import jobs
from core.db import session_scope
from core.models import Job, Photo, Subject
from core.settings import Settings
from tests.helpers.photos import jpeg
from tests.helpers.profile import settings_env


def write_photos(folder: Path) -> list[str]:
    """Three good photos, a copy of the first and a nearly black one."""
    dark = io.BytesIO()
    Image.new("RGB", (600, 600), (4, 4, 4)).save(dark, "JPEG")
    contents = [jpeg(1), jpeg(2), jpeg(1), jpeg(3), dark.getvalue()]
    names = ["rex1.jpg", "rex2.jpg", "rex1-again.jpg", "rex3.jpg", "night.jpg"]
    for name, data in zip(names, contents, strict=True):
        (folder / name).write_bytes(data)
    return [str(folder / n) for n in names]


@pytest.fixture
def queued_only(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Stop at the queued job: this is about what happens before training, not training."""
    seen: list[int] = []

    def stop_here(settings: Settings, job_id: int, body: object) -> object:
        seen.append(job_id)
        return jobs.get_job(settings, job_id)

    monkeypatch.setattr(local_jobs, "run_or_follow", stop_here)
    return seen


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_the_table_comes_first_and_no_trains_nothing(
    sqlite_settings: Settings, tmp_path: Path, queued_only: list[int]
) -> None:
    args = ["train", *write_photos(tmp_path), "--name", "Rex", "--class", "dog"]
    result = CliRunner().invoke(app, args, env=settings_env(sqlite_settings), input="n\n")
    assert result.exit_code == 1 and "Nothing was trained." in result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#  photo"))
    rows = lines[header + 1 : header + 6]
    assert [r.split()[2] for r in rows] == ["ok", "ok", "drop", "ok", "warn"]
    assert "This photo is a copy of photo 1" in rows[2] and "is too dark" in rows[4]
    assert "1 is a copy of another — 4 photos will be used." in result.output
    assert result.output.index("Train anyway?") > result.output.index("4 photos will be used")
    assert count(sqlite_settings, Job) == 0 and count(sqlite_settings, Subject) == 0 and queued_only == []


@pytest.mark.parametrize("how", ["answer y", "--yes"])
def test_yes_trains_on_the_kept_photos(
    how: str, sqlite_settings: Settings, tmp_path: Path, queued_only: list[int]
) -> None:
    args = ["train", *write_photos(tmp_path), "--name", "Rex", "--class", "dog"]
    env = settings_env(sqlite_settings)
    if how == "--yes":
        result = CliRunner().invoke(app, [*args, "--yes"], env=env)
        assert "Train anyway?" not in result.output
    else:
        result = CliRunner().invoke(app, args, env=env, input="y\n")
        assert "Train anyway?" in result.output
    assert len(queued_only) == 1, result.output
    with session_scope(sqlite_settings) as s:
        job = s.get(Job, queued_only[0])
        assert job is not None and job.kind == "train"
        assert (
            s.scalar(select(func.count()).select_from(Photo).where(Photo.subject_id == job.subject_id)) == 4
        )
