"""`dreambot train` asks for --consent before training a person, like /train in chat."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from bot.cli.main import app
from core.db import session_scope
from core.models import Job, Subject
from core.settings import Settings
from tests.helpers.photos import jpeg
from tests.helpers.profile import settings_env


def test_a_person_is_refused_without_consent_and_the_flag_gets_past_it(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    photos = []
    for i in range(2):  # too few on purpose: with --consent the next check refuses, cheaply
        (path := tmp_path / f"ann{i}.jpg").write_bytes(jpeg(i))
        photos.append(str(path))
    args = ["train", *photos, "--name", "Ann", "--class", "woman"]
    env = settings_env(sqlite_settings)

    refused = CliRunner().invoke(app, args, env=env)
    assert refused.exit_code == 1 and "I need your confirmation" in refused.output
    assert "again with --consent" in refused.output

    past = CliRunner().invoke(app, [*args, "--consent", "--keep-photos"], env=env)
    assert past.exit_code == 1 and "at least 3 photos" in past.output
    with session_scope(sqlite_settings) as s:
        assert s.scalar(select(func.count(Subject.id))) == 0 and s.scalar(select(func.count(Job.id))) == 0
