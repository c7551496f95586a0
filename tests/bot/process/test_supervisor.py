"""The supervisor both `dreambot up` and `dreambot worker --gpus` use: backoff between
restarts, giving up on a worker that keeps dying, one worker per name on a data folder.

Stand-in workers (tiny Python scripts) keep these fast; `test_up_supervision.py` runs the
same code with real Celery workers under `dreambot up`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bot.process.supervisor import Backoff, LaunchError, Supervisor, WorkerSpec
from core.logs import CONSOLE
from tests.bot.process.test_launcher import alive, reports
from tests.helpers.workers import wait_for

SPEC = WorkerSpec("train@box", "train", {})

# Prints a line and exits at once with code 3: a worker that cannot start.
CRASHER = "import sys; print('starting and failing', flush=True); sys.exit(3)"

# Like test_launcher's REPORTER, but ignores SIGTERM, as Celery's warm shutdown does while
# a job runs: it outlives a launcher killed with -9 until something kills it for good.
STUBBORN = """
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out, name = sys.argv[1], sys.argv[2]
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(out, name + ".tmp"), "w") as f:
    json.dump({"pid": os.getpid(), "grandchild": grandchild.pid}, f)
os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".json"))
time.sleep(600)
"""

LAUNCHER = """
import sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.bot.process.test_supervisor import SPEC, stubborn
stubborn(Path(sys.argv[1]), run_dir=Path(sys.argv[2])).run(threading.Event(), [SPEC])
"""


def stubborn(out: Path, **options: Any) -> Supervisor:
    return Supervisor(command=lambda spec: [sys.executable, "-c", STUBBORN, str(out), spec.name], **options)


def crasher(**options: Any) -> Supervisor:
    return Supervisor(command=lambda spec: [sys.executable, "-c", CRASHER], **options)


def console_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CONSOLE]


def run_until(supervisor: Supervisor, state: str, count: int = 1) -> None:
    """Run `supervisor` on SPEC in a thread until its worker reaches `state`, then stop it."""
    stop = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop, [SPEC]), kwargs={"poll": 0.02})
    runner.start()
    try:
        wait_for(lambda: supervisor.states()[0].state == state, 60, what=f"state {state}")
    finally:
        stop.set()
        runner.join(60)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff(first=1, cap=8).delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_a_worker_that_keeps_dying_is_reported_and_left_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CONSOLE)
    backoff = Backoff(first=0.05, cap=0.2, give_up_after=5)
    supervisor = crasher(backoff=backoff, give_up="report", log_dir=tmp_path / "logs")
    run_until(supervisor, "failed")
    log_file = tmp_path / "logs" / "train@box.log"
    waits = [line.rsplit("restarting in ", 1)[1] for line in console_lines(caplog) if "restarting in" in line]
    assert waits == ["0.05 s", "0.1 s", "0.2 s", "0.2 s"]  # each after "exited (exit code 3)"
    assert console_lines(caplog)[-1] == (
        f"worker train@box: exited 5 times in a row (exit code 3); not restarting it (its log: {log_file})"
    )
    state = supervisor.states()[0]
    assert (state.state, state.restarts, state.healthy) == ("failed", 4, False)
    assert log_file.read_text().count("starting and failing") == 5  # started 5 times, no more


def test_a_worker_that_ran_a_while_starts_over_at_the_first_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CONSOLE)
    # stable_after=0: every run counts as a long one, so the wait never grows and it never gives up.
    supervisor = crasher(backoff=Backoff(first=0.05, give_up_after=2, stable_after=0))
    stop = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop, [SPEC]), kwargs={"poll": 0.02})
    runner.start()
    try:
        wait_for(lambda: supervisor.states()[0].restarts >= 4, 60, what="four restarts")
    finally:
        stop.set()
        runner.join(60)
    waits = {line.rsplit("restarting in ", 1)[1] for line in console_lines(caplog) if "restarting in" in line}
    assert waits == {"0.05 s"}
    assert not any("not restarting" in line for line in console_lines(caplog))


def test_a_name_runs_under_one_launcher_at_a_time(tmp_path: Path) -> None:
    first, second = stubborn(tmp_path, run_dir=tmp_path / "run"), stubborn(tmp_path, run_dir=tmp_path / "run")
    first.claim([SPEC])
    with pytest.raises(LaunchError, match="train@box is already run by another dreambot on this data folder"):
        second.claim([SPEC])
    first.release()
    second.claim([SPEC])
    second.release()


def test_a_worker_left_by_a_killed_launcher_is_stopped_before_the_next_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CONSOLE)
    root = str(Path(__file__).resolve().parents[3])
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path), str(run_dir), root], start_new_session=True
    )
    old = reports(tmp_path, 1)["train@box"]
    old_pid, old_child = int(old["pid"]), int(old["grandchild"])  # type: ignore[call-overload]
    try:
        launcher.kill()  # kill -9: the worker ignores the SIGTERM it gets and stays
        launcher.wait(30)
        assert alive(old_pid)
        (tmp_path / "train@box.json").unlink()
        supervisor = stubborn(tmp_path, run_dir=run_dir, stale_timeout=0.5)
        supervisor.claim([SPEC])
        assert not alive(old_pid) and not alive(old_child)  # the whole group, before a new one
        assert console_lines(caplog) == [
            f"worker train@box: stopped the one an earlier dreambot left running (pid {old_pid})"
        ]
        stop = threading.Event()
        runner = threading.Thread(target=supervisor.run, args=(stop,))
        runner.start()
        new = reports(tmp_path, 1)["train@box"]
        stop.set()
        runner.join(60)
        assert new["pid"] != old_pid
        wait_for(lambda: not alive(int(new["pid"])), 30, what="the new worker to stop")  # type: ignore[call-overload]
    finally:
        for pid in (old_pid, old_child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    """The pid file of a dead worker whose number now belongs to someone else stops nothing."""
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "train@box.pid").write_text(f'{{"pid": {bystander.pid}, "create_time": 1.0}}')
        supervisor = stubborn(tmp_path, run_dir=tmp_path / "run", stale_timeout=0.5)
        supervisor.claim([SPEC])
        supervisor.release()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(10)
