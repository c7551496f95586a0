"""`dreambot up` on a fresh folder: migrates, starts workers and web, stops cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers.workers import wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_serves_http_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMBOT_")}
    env.update(DREAMBOT_WEB_PORT=str(port), DREAMBOT_HEARTBEAT_INTERVAL="0.5")
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "up"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def workers_online() -> list[str] | None:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "up.log").read_text())
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            except httpx.HTTPError:
                return None
            return health["workers"] if len(health["workers"]) == 2 else None

        workers = wait_for(workers_online, 120, interval=0.3, what="dreambot up to serve with two workers")
        assert sorted(w.split("@")[0] for w in workers) == ["sample", "train"]
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "dreambot is running" in page.text
        assert (tmp_path / "var" / "dreambot.db").exists()  # embedded defaults, relative to cwd
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        _gone, alive = psutil.wait_procs(family, timeout=10)
        assert alive == [], f"orphans left behind: {alive}"
        assert "dreambot stopped" in (tmp_path / "up.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
