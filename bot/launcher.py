"""Starting and stopping the processes of one dreambot machine (`dreambot up`).

Workers run as child processes in their own process groups, so stopping them takes
their Celery pool children too: Ctrl-C leaves no orphans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)

    def start_worker(self, queues: str, gpu: str | None = None) -> Child:
        """A `dreambot worker` for `queues` (one queue per process keeps training off sampling)."""
        suffix = f"-gpu{gpu}" if gpu is not None else ""
        name = f"{queues.replace(',', '+')}{suffix}@{socket.gethostname()}"
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, "-m", "bot.cli", "worker", "--queues", queues, "--name", name]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        child = Child(name, proc)
        self.children.append(child)
        log.info("started worker %s (pid %s)", name, proc.pid)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every child group (Celery's warm shutdown), then SIGKILL stragglers."""
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        for child in self.children:
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %ss; killing it", child.name, timeout)
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait(5)
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
