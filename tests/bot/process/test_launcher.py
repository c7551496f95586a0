"""`dreambot worker --gpus`: GPU discovery, one process per GPU and queue, stopped together.

The launcher logic runs against a fake `nvidia-smi` (a script on PATH printing what the
real one prints) and harmless child commands that report their environment; one test
runs the real command with a real Celery worker on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.process.launcher import Gpu, discover_gpus, plan_workers, select_gpus
from bot.process.supervisor import Backoff, LaunchError, Supervisor, WorkerSpec
from core.db import session_scope
from core.models import Worker
from core.settings import Settings
from tests.helpers.profile import settings_env
from tests.helpers.workers import wait_for

SMI_OUTPUT = "0, GPU-aaaa, NVIDIA H100 80GB HBM3\n1, GPU-bbbb, NVIDIA H100 80GB HBM3\n"


def fake_smi(folder: Path, output: str = SMI_OUTPUT) -> dict[str, str]:
    """An environment whose PATH finds a fake nvidia-smi printing `output`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{folder}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent may not have reaped it yet).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_discovery_reads_nvidia_smi_and_respects_visible_devices(tmp_path: Path) -> None:
    env = fake_smi(tmp_path / "bin")
    assert discover_gpus(env) == [
        Gpu("0", "GPU-aaaa", "NVIDIA H100 80GB HBM3"),
        Gpu("1", "GPU-bbbb", "NVIDIA H100 80GB HBM3"),
    ]
    assert [g.index for g in discover_gpus({**env, "CUDA_VISIBLE_DEVICES": "1"})] == ["1"]
    assert [g.uuid for g in discover_gpus({**env, "CUDA_VISIBLE_DEVICES": "GPU-bbbb"})] == ["GPU-bbbb"]
    assert discover_gpus({**env, "CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover_gpus({**env, "CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert discover_gpus(fake_smi(tmp_path / "none", output="")) == []


def test_without_nvidia_smi_torch_is_asked_in_a_subprocess(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    # CPU-only torch here: no GPU, and this process never touched CUDA.
    assert discover_gpus({"PATH": str(empty)}) == []
    assert "torch" not in sys.modules or not __import__("torch").cuda.is_initialized()


def test_select_gpus() -> None:
    found = [Gpu("0", "GPU-a"), Gpu("1", "GPU-b"), Gpu("2", "GPU-c")]
    assert select_gpus("all", found) == found
    assert select_gpus(" 2,0,2 ", found) == [found[2], found[0]]
    with pytest.raises(LaunchError, match=r"no GPU 5 here \(this host has: 0, 1, 2\)"):
        select_gpus("0,5", found)
    with pytest.raises(LaunchError, match="this host has: none"):
        select_gpus("0", [])


def test_plan_names_and_environment() -> None:
    specs = plan_workers([Gpu("0", "GPU-a"), Gpu("3")], host="box")
    assert [(s.name, s.queues, s.env["CUDA_VISIBLE_DEVICES"]) for s in specs] == [
        ("train-gpu0@box", "train", "GPU-a"),
        ("sample-gpu0@box", "sample", "GPU-a"),
        ("train-gpu3@box", "train", "3"),
        ("sample-gpu3@box", "sample", "3"),
    ]
    assert all(s.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for s in specs)
    cpu = plan_workers([], ["sample"], host="box")
    assert [(s.name, s.env) for s in cpu] == [("sample-cpu@box", {"CUDA_VISIBLE_DEVICES": ""})]


# A stand-in worker: reports its name, environment and pids, starts a grandchild (like
# Celery's pool child), then waits to be stopped.
REPORTER = """
import json, os, subprocess, sys, time
out, name = sys.argv[1], sys.argv[2]
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
report = {"name": name, "pid": os.getpid(), "grandchild": grandchild.pid,
          "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "order": os.environ.get("CUDA_DEVICE_ORDER")}
tmp = os.path.join(out, name + ".tmp")
with open(tmp, "w") as f:
    json.dump(report, f)
os.replace(tmp, os.path.join(out, name + ".json"))
time.sleep(600)
"""


def reporter(out: Path, **options: Any) -> Supervisor:
    return Supervisor(command=lambda spec: [sys.executable, "-c", REPORTER, str(out), spec.name], **options)


def reports(out: Path, n: int) -> dict[str, dict[str, object]]:
    def ready() -> dict[str, dict[str, object]] | None:
        got = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
        return got if len(got) >= n else None

    return wait_for(ready, 60, what=f"{n} workers to report")


def test_one_process_per_gpu_and_queue_stopped_together(tmp_path: Path) -> None:
    gpus = select_gpus("all", discover_gpus(fake_smi(tmp_path / "bin")))
    specs = plan_workers(gpus, host="box")
    supervisor, stop = reporter(tmp_path), threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop, specs))
    runner.start()
    try:
        got = reports(tmp_path, 4)
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    assert {name: (r["cvd"], r["order"]) for name, r in got.items()} == {
        "train-gpu0@box": ("GPU-aaaa", "PCI_BUS_ID"),
        "sample-gpu0@box": ("GPU-aaaa", "PCI_BUS_ID"),
        "train-gpu1@box": ("GPU-bbbb", "PCI_BUS_ID"),
        "sample-gpu1@box": ("GPU-bbbb", "PCI_BUS_ID"),
    }
    pids = [int(r[k]) for r in got.values() for k in ("pid", "grandchild")]  # type: ignore[call-overload]
    wait_for(lambda: not any(alive(p) for p in pids), 30, what="every worker and pool child to exit")
    assert {w.state for w in supervisor.states()} == {"stopped"}


def test_a_dead_worker_is_restarted_and_a_crash_loop_stops_all(tmp_path: Path) -> None:
    supervisor, stop = reporter(tmp_path, backoff=Backoff(first=0.1, give_up_after=3)), threading.Event()
    specs = [WorkerSpec("train-gpu0@box", "train", {}), WorkerSpec("sample-gpu0@box", "sample", {})]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            supervisor.run(stop, specs)
        except LaunchError as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    first = reports(tmp_path, 2)
    victim = int(first["sample-gpu0@box"]["pid"])  # type: ignore[call-overload]
    (tmp_path / "sample-gpu0@box.json").unlink()
    os.killpg(victim, signal.SIGKILL)  # the worker and its pool child, as on an OOM kill
    again = reports(tmp_path, 2)
    assert again["sample-gpu0@box"]["pid"] != victim  # restarted under the same name
    # Kill it twice more: after two restarts the launcher gives up and stops the other too.
    (tmp_path / "sample-gpu0@box.json").unlink()
    os.killpg(int(again["sample-gpu0@box"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    third = reports(tmp_path, 2)
    os.killpg(int(third["sample-gpu0@box"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    runner.join(60)
    assert not runner.is_alive()
    assert (
        errors
        and "sample-gpu0@box: exited 3 times in a row (killed by SIGKILL); stopping every worker"
        in str(errors[0])
    )
    other = int(first["train-gpu0@box"]["pid"])  # type: ignore[call-overload]
    wait_for(lambda: not alive(other), 30, what="the healthy worker to be stopped too")


def test_cli_says_when_there_is_no_gpu(sqlite_settings: Settings, tmp_path: Path) -> None:
    env = {**settings_env(sqlite_settings), "PATH": fake_smi(tmp_path / "bin", output="")["PATH"]}
    cmd = [sys.executable, "-m", "bot.cli", "worker", "--gpus", "all"]
    no_gpu = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert no_gpu.returncode == 2
    assert "no GPU found on this host" in no_gpu.stderr and "--cpu" in no_gpu.stderr
    wrong = subprocess.run(
        [*cmd[:-1], "5"],
        env={**env, "PATH": fake_smi(tmp_path / "two")["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2 and "this host has: 0, 1" in wrong.stderr
    named = subprocess.run([*cmd, "--name", "x"], env=env, capture_output=True, text=True, timeout=120)
    assert named.returncode == 2 and "--name" in named.stderr


@pytest.mark.slow
def test_cli_runs_real_cpu_workers_and_stops_them(sqlite_settings: Settings, tmp_path: Path) -> None:
    env = {**settings_env(sqlite_settings), "PATH": fake_smi(tmp_path / "bin", output="")["PATH"]}
    log_path = tmp_path / "launcher.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--gpus", "all", "--cpu", "--queues", "sample"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    name = f"sample-cpu@{socket.gethostname()}"
    try:

        def registered() -> bool:
            assert proc.poll() is None, log_path.read_text()
            with session_scope(sqlite_settings) as s:
                return s.scalar(select(Worker.name).where(Worker.name == name)) is not None

        wait_for(registered, 120, what=f"{name} to register")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log_path.read_text()
    assert "no GPU found on this host; running on the CPU only" in text
    # Nothing of the worker's process group is left behind.
    leftovers = subprocess.run(
        ["pgrep", "-f", "--", f"--name {name}"], capture_output=True, text=True
    ).stdout.split()
    assert [p for p in leftovers if alive(int(p))] == []


LAUNCHER = """
import sys, threading
sys.path.insert(0, sys.argv[2])
from tests.bot.process.test_launcher import reporter
from bot.process.supervisor import WorkerSpec
from pathlib import Path
reporter(Path(sys.argv[1])).run(threading.Event(), [WorkerSpec("train-gpu0@box", "train", {})])
"""


def test_workers_die_with_a_killed_launcher(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[3])
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path), root], start_new_session=True)
    report = reports(tmp_path, 1)["train-gpu0@box"]
    child, grandchild = int(report["pid"]), int(report["grandchild"])  # type: ignore[call-overload]
    try:
        launcher.kill()  # SIGKILL: no cleanup code runs in the launcher
        launcher.wait(30)
        wait_for(lambda: not alive(child), 30, what="the orphaned worker to exit")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        # The stand-in has no pool to stop (Celery stops its own on SIGTERM): tidy up.
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
