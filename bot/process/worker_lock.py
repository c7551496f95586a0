"""One supervised worker per name on a data folder: a lock and a pid file per worker name.

A launcher (`dreambot up`, `dreambot worker --gpus`) holds `DATA_DIR/run/<name>.lock` for as
long as it supervises that worker, and records the worker's pid (and start time, against
pid reuse) in `<name>.pid`. The kernel drops the lock when the launcher dies, even by
`kill -9`; the pid file stays. So the next launcher gets the lock, finds the worker the
dead one left behind (a Celery warm shutdown can outlive its launcher by a whole job) and
stops it before starting its own: never two workers of one name side by side. A second
launcher while the first is alive does not get the lock and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
from filelock import FileLock, Timeout


class NameTaken(Exception):
    """Another live launcher supervises this worker name."""


class WorkerLock:
    def __init__(self, run_dir: Path, name: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.pid_path = run_dir / f"{name}.pid"
        # thread_local=False: the supervisor thread may release what the main thread took.
        self._lock = FileLock(run_dir / f"{name}.lock", timeout=0, thread_local=False)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:
            raise NameTaken(
                f"worker {self.name} is already run by another dreambot on this data folder; stop that one first"
            ) from None

    def release(self) -> None:
        self._lock.release()

    def leftover(self) -> int | None:
        """The pid (= process group) of a worker an earlier launcher left running, if any."""
        try:
            recorded = json.loads(self.pid_path.read_text())
            pid, started = int(recorded["pid"]), float(recorded["create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            same = abs(psutil.Process(pid).create_time() - started) < 0.01
        except psutil.NoSuchProcess:
            # The leader is gone; its pool children may not be. A pid still in use as a
            # process group id is never reused, so the group is that worker's.
            return pid if _group_alive(pid) else None
        return pid if same else None  # a live pid that is someone else's now

    def stop_leftover(self, timeout: float) -> int | None:
        """Stop what `leftover` finds: SIGTERM to its group, SIGKILL after `timeout`."""
        pid = self.leftover()
        if pid is None:
            return None
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pid, signal.SIGKILL)
        while _group_alive(pid) and time.monotonic() < deadline + 10:
            time.sleep(0.1)
        return pid

    def record(self, pid: int) -> None:
        data = {"pid": pid, "create_time": psutil.Process(pid).create_time()}
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.pid_path)

    def forget(self) -> None:
        self.pid_path.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    """Any process left in the group that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
