"""`dreambot up` as a subprocess for tests: its terminal output, /healthz and its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil

from core.settings import Settings
from tests.helpers.profile import settings_env
from tests.helpers.workers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UpProcess:
    """One `dreambot up` on `settings`, its stdout and stderr captured to a file."""

    def __init__(self, settings: Settings, out_dir: Path, *args: str, label: str = "up") -> None:
        self.settings = settings
        self.port = free_port()
        self.out_path = out_dir / f"{label}.out"
        env = {**settings_env(settings), "DREAMBOT_WEB_PORT": str(self.port)}
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "up", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def wait_output(self, *needles: str, timeout: float = 180) -> str:
        """Wait until every needle has been printed; the output so far."""

        def printed() -> str | None:
            text = self.output()
            if self.proc.poll() is not None and not all(n in text for n in needles):
                raise RuntimeError(f"dreambot up exited early ({self.proc.returncode}):\n{text[-5000:]}")
            return text if all(n in text for n in needles) else None

        return wait_for(printed, timeout, interval=0.2, what=f"dreambot up to print {needles}")

    def health(self) -> dict[str, Any] | None:
        try:
            return dict(httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json())
        except httpx.HTTPError:
            return None

    def wait_healthy(self, timeout: float = 180) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dreambot up exited early:\n{self.output()[-5000:]}")
            health = self.health()
            return health if health is not None and health["status"] == "ok" else None

        return wait_for(ok, timeout, interval=0.3, what="dreambot up to report every worker ready")

    def worker(self, queue: str) -> psutil.Process:
        """The worker process (its group leader) this `dreambot up` runs for `queue`."""
        for child in psutil.Process(self.proc.pid).children():
            cmd = child.cmdline()
            if "worker" in cmd and cmd[cmd.index("--queues") + 1] == queue:
                return child
        raise AssertionError(f"no {queue} worker under dreambot up")

    def kill_everything(self) -> None:
        """Test clean-up: SIGKILL this process and every process group under it."""
        groups = set()
        with contextlib.suppress(psutil.NoSuchProcess):
            for proc in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(ProcessLookupError):
                    groups.add(os.getpgid(proc.pid))
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


def worker_groups(settings: Settings, name: str) -> set[int]:
    """Process groups of every live (not zombie) process running the worker `name` on these
    settings' data folder (other tests on this machine run workers of the same name)."""
    groups = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if "--name" not in cmd or cmd[cmd.index("--name") + 1] != name or proc.info["status"] == "zombie":
            continue
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.environ().get("DREAMBOT_DATA_DIR") == str(settings.data_dir):
                groups.add(os.getpgid(proc.pid))
    return groups
