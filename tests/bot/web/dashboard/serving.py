"""`dreambot dashboard` / `dreambot up` as a real process on a free port, for tests that
need the real server (uvicorn's options, start-up checks, the process's memory)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from core.settings import Settings
from tests.helpers.profile import settings_env
from tests.helpers.workers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    settings: Settings, folder: Path, *, command: tuple[str, ...] = ("dashboard",), **env: str
) -> Iterator[Served]:
    """Run `dreambot <command>` with `settings` (+ DREAMBOT_* `env`) until the block ends."""
    port = free_port()
    variables = settings_env(settings)
    variables.update(DREAMBOT_WEB_PORT=str(port), DREAMBOT_WEB_HOST="127.0.0.1", **env)
    log = folder / f"{command[0]}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *command],
            cwd=folder,
            env=variables,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(served.output())
            try:
                return httpx.get(f"{served.url}/admin/login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 120, interval=0.2, what=f"dreambot {command[0]} to serve")
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
