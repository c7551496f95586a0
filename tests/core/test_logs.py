"""Structured logs: JSON lines carry the job id bound around a job's work, and only there."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.logs import bind_job, current_job_id, setup_logging
from tests.helpers.profile import make_test_settings


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging(make_test_settings(tmp_path, log_format="json", log_level="info"), stream)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_bound_job_id(json_log: io.StringIO) -> None:
    log = logging.getLogger("dreambot.test")
    log.info("before")
    with bind_job(42):
        assert current_job_id() == 42
        log.info("inside %s", "the job")
        # A thread started with a copy of the context (asyncio.to_thread does this) keeps it.
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(log.warning, "from a thread"))
        thread.start()
        thread.join()
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.debug("not at info level")
    log.info("after")
    got = lines(json_log)
    assert [(g["event"], g.get("job_id")) for g in got] == [
        ("before", None),
        ("inside the job", 42),
        ("from a thread", 42),
        ("failed", 42),
        ("after", None),
    ]
    assert got[1]["level"] == "info" and got[1]["logger"] == "dreambot.test"
    assert "ValueError: boom" in str(got[3]["exception"])
    assert current_job_id() is None


def test_text_format_is_one_readable_line(tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        setup_logging(make_test_settings(tmp_path, log_format="text"), stream)
        with bind_job(7):
            logging.getLogger("dreambot.test").info("hello")
    finally:
        root.handlers[:] = saved
    line = stream.getvalue().strip()
    assert "hello" in line and "job_id=7" in line and not line.startswith("{")


def test_bad_log_format_names_the_setting(tmp_path: Path) -> None:
    from core.settings import SettingsError

    with pytest.raises(SettingsError, match="DREAMBOT_LOG_FORMAT"):
        make_test_settings(tmp_path, log_format="xml")
