"""Starting and stopping worker processes: `dreambot up` and `dreambot worker --gpus`.

Workers run as child processes in their own process groups, so stopping them takes
their Celery pool children too: Ctrl-C leaves no orphans.

`dreambot worker --gpus all|0,1` runs one Celery worker process per GPU *and* queue
(`train-gpu0@host`, `sample-gpu0@host`, …): training and sampling never share a process,
so a long training never blocks sampling, and each process sees exactly one GPU through
`CUDA_VISIBLE_DEVICES`. GPUs are found with `nvidia-smi` (or torch in a subprocess, so
this process never initialises CUDA); a child that dies is restarted, and one that keeps
dying stops them all, so systemd sees the failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

QUEUES = ("train", "sample")
DISCOVERY_TIMEOUT = 60.0


class LaunchError(Exception):
    """Workers could not be planned or kept running; the message says why, for a person."""


@dataclass(frozen=True)
class Gpu:
    index: str  # nvidia-smi's index: the name the operator sees (train-gpu0)
    uuid: str = ""  # what the child gets in CUDA_VISIBLE_DEVICES when known (order-proof)
    name: str = "GPU"

    @property
    def visible_as(self) -> str:
        return self.uuid or self.index


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: str
    env: dict[str, str]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    spec: WorkerSpec | None = None
    restarts: deque[float] = field(default_factory=lambda: deque(maxlen=8))


# -- discovery and planning -----------------------------------------------------------------


def discover_gpus(env: dict[str, str] | None = None) -> list[Gpu]:
    """The GPUs this host's workers may use. A `CUDA_VISIBLE_DEVICES` already set (by
    systemd, a container runtime) limits them; empty or -1 means none."""
    env = dict(os.environ if env is None else env)
    found = _nvidia_smi(env)
    if found is None:
        found = _torch_count(env)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not wanted or wanted[0] == "-1":
        return []
    by_id = {g.index: g for g in found} | {g.uuid: g for g in found if g.uuid}
    return [by_id.get(w, Gpu(index=w)) for w in wanted]


def _nvidia_smi(env: dict[str, str]) -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi", path=env.get("PATH"))
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=DISCOVERY_TIMEOUT,
            env=env,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s); asking torch instead", exc)
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(index=parts[0], uuid=parts[1], name=parts[2]))
    return gpus


def _torch_count(env: dict[str, str]) -> list[Gpu]:
    # A subprocess: CUDA initialised here would be inherited, broken, by forked children.
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=DISCOVERY_TIMEOUT, env=env
        )
        count = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        count = 0
    return [Gpu(index=str(i)) for i in range(count)]


def select_gpus(spec: str, found: Sequence[Gpu]) -> list[Gpu]:
    """`all` or a comma-separated list of indices, checked against what is there."""
    if spec.strip().lower() == "all":
        return list(found)
    by_index = {g.index: g for g in found}
    wanted = list(dict.fromkeys(item.strip() for item in spec.split(",") if item.strip()))
    missing = [w for w in wanted if w not in by_index]
    if missing or not wanted:
        have = ", ".join(sorted(by_index)) or "none"
        raise LaunchError(f"--gpus {spec}: no GPU {', '.join(missing) or spec} here (this host has: {have})")
    return [by_index[w] for w in wanted]


def plan_workers(
    gpus: Sequence[Gpu], queues: Sequence[str] = QUEUES, host: str | None = None
) -> list[WorkerSpec]:
    """One process per GPU and queue; with no GPUs, one CPU process per queue."""
    host = host or socket.gethostname()
    if not gpus:
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU worker stays a CPU worker.
        return [WorkerSpec(f"{q}-cpu@{host}", q, {"CUDA_VISIBLE_DEVICES": ""}) for q in queues]
    return [
        WorkerSpec(
            f"{q}-gpu{gpu.index}@{host}",
            q,
            # PCI order makes CUDA's numbering agree with nvidia-smi's (when given an index).
            {"CUDA_VISIBLE_DEVICES": gpu.visible_as, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        )
        for gpu in gpus
        for q in queues
    ]


def worker_command(spec: WorkerSpec) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "worker", "--queues", spec.queues, "--name", spec.name]


# -- running ---------------------------------------------------------------------------------


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    command: Callable[[WorkerSpec], list[str]] = worker_command

    def start_worker(self, queues: str, gpu: str | None = None) -> Child:
        """A `dreambot worker` for `queues` (one queue per process keeps training off sampling)."""
        suffix = f"-gpu{gpu}" if gpu is not None else ""
        name = f"{queues.replace(',', '+')}{suffix}@{socket.gethostname()}"
        env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}
        return self.start(WorkerSpec(name, queues, env))

    def start(self, spec: WorkerSpec) -> Child:
        proc = subprocess.Popen(
            self.command(spec),
            env={**os.environ, **spec.env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(spec.name, proc, spec)
        self.children.append(child)
        log.info("started worker %s (pid %s) %s", spec.name, proc.pid, spec.env)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is not None]

    def restart(self, child: Child) -> Child:
        assert child.spec is not None
        self.children.remove(child)
        new = self.start(child.spec)
        new.restarts = child.restarts
        new.restarts.append(time.monotonic())
        return new

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every child group (Celery's warm shutdown), then SIGKILL stragglers."""
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %ss; killing it", child.name, timeout)
            # The group, not only the leader: a pool child may outlive its parent.
            _signal_group(child.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(5)
        self.children.clear()


def run_workers(
    specs: Sequence[WorkerSpec],
    supervisor: Supervisor,
    stop: threading.Event,
    *,
    max_restarts: int = 5,
    window: float = 300.0,
    stop_timeout: float = 30.0,
) -> None:
    """Start every spec, restart a child that dies, stop all on `stop` (or a crash loop)."""
    for spec in specs:
        supervisor.start(spec)
    try:
        while not stop.wait(1.0):
            for child in supervisor.dead():
                now = time.monotonic()
                recent = [t for t in child.restarts if now - t < window]
                if len(recent) >= max_restarts:
                    raise LaunchError(
                        f"worker {child.name} exited {len(recent) + 1} times in {int(window)} s "
                        f"(last exit code {child.proc.returncode}); stopping every worker"
                    )
                log.warning("worker %s exited (code %s); restarting it", child.name, child.proc.returncode)
                supervisor.restart(child)
    finally:
        supervisor.stop(stop_timeout)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd) and SIGINT (Ctrl-C) both mean: stop every worker, then exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, even by SIGKILL, so a
    killed launcher never leaves GPU workers behind (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
