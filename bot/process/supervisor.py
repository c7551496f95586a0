"""Keeping worker processes running: `dreambot up` and `dreambot worker --gpus` both use this.

Each worker is a child process in its own process group (stopping it takes its Celery pool
child too) that also gets SIGTERM when the launcher dies, even by SIGKILL (Linux). A child
that exits is started again after a backoff (1 s, 2 s, 4 s … up to a cap), and every exit
and restart is announced. The backoff starts over once a worker has run for a while; a
worker that keeps dying is given up on: `dreambot up` reports it (and `/healthz` shows
it), `dreambot worker --gpus` stops every worker, so systemd sees the failure.

A worker counts as ready when its row in `workers` says its own pid (the probe); that is
when the console says so, and on which device. One lock per worker name in the data
folder (`bot.process.worker_lock`) keeps two launchers, or a launcher and a worker its killed
predecessor left behind, from ever running two workers of one name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from bot.process.console import NO_GPU_LINE, device_of
from bot.process.worker_lock import NameTaken, WorkerLock
from core.logs import announce

log = logging.getLogger(__name__)

State = Literal["starting", "running", "ready", "silent", "restarting", "failed", "stopped"]
HEALTHY: frozenset[str] = frozenset({"running", "ready"})
LOG_ROTATE_BYTES = 20_000_000


class LaunchError(Exception):
    """Workers could not be planned or kept running; the message says why, for a person."""


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queues: str
    env: dict[str, str]


@dataclass(frozen=True)
class Backoff:
    """When to start a dead worker again, and when to stop trying."""

    first: float = 1.0
    cap: float = 60.0
    give_up_after: int = 6  # exits in a row, each after less than `stable_after`
    stable_after: float = 60.0  # a worker that ran this long starts over at `first`

    def delay(self, failures: int) -> float:
        return min(self.first * 2 ** max(failures - 1, 0), self.cap)


@dataclass(frozen=True)
class WorkerState:
    """One supervised worker as `/healthz` and the console see it."""

    name: str
    queues: str
    state: State
    pid: int | None
    restarts: int
    detail: str

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY


# `probe({name: pid})` → {name: worker row info} for each worker whose row is fresh and
# carries that pid: the worker is up and serving.
Probe = Callable[[dict[str, int]], dict[str, dict[str, Any]]]


def worker_command(spec: WorkerSpec) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "worker", "--queues", spec.queues, "--name", spec.name]


@dataclass
class _Slot:
    spec: WorkerSpec
    lock: WorkerLock | None = None
    proc: subprocess.Popen[bytes] | None = None
    state: State = "starting"
    since: float = 0.0  # monotonic: when the current process started
    failures: int = 0  # short-lived exits in a row
    restarts: int = 0
    retry_at: float = 0.0
    detail: str = "starting"
    last_exit: str = ""  # how the previous process ended, in words


@dataclass
class Supervisor:
    command: Callable[[WorkerSpec], list[str]] = worker_command
    backoff: Backoff = field(default_factory=Backoff)
    run_dir: Path | None = None  # where the per-name locks live (None: no locks)
    log_dir: Path | None = None  # each worker's output to <name>.log (None: inherited)
    probe: Probe | None = None
    give_up: Literal["report", "stop_all"] = "stop_all"
    stale_timeout: float = 10.0
    probe_every: float = 5.0  # seconds between looks at ready workers' rows (every tick while one starts)
    _slots: list[_Slot] = field(default_factory=list)
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    _said_no_gpu: bool = False
    _next_probe: float = 0.0

    # -- the whole life ---------------------------------------------------------------------

    def claim(self, specs: Sequence[WorkerSpec]) -> None:
        """Take each name's lock and stop what an earlier, killed launcher left running."""
        for spec in specs:
            slot = _Slot(spec)
            if self.run_dir is not None:
                slot.lock = WorkerLock(self.run_dir, spec.name)
                try:
                    slot.lock.acquire()
                except NameTaken as exc:
                    self.release()
                    raise LaunchError(str(exc)) from None
                stopped = slot.lock.stop_leftover(self.stale_timeout)
                if stopped is not None:
                    announce(
                        f"worker {spec.name}: stopped the one an earlier dreambot left running (pid {stopped})"
                    )
            self._slots.append(slot)

    def run(self, stop: threading.Event, specs: Sequence[WorkerSpec] = (), poll: float = 0.5) -> None:
        """Start every claimed worker (and `specs`), keep them running until `stop`, then stop them."""
        try:
            if specs:
                self.claim(specs)
            for slot in self._slots:
                self._start(slot)
            while not stop.wait(poll):
                self.tick()
        finally:
            self.stop()

    def tick(self) -> None:
        """One look at every worker: exits, due restarts, readiness."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.state in ("failed", "stopped"):
                continue
            if slot.state == "restarting":
                if now >= slot.retry_at:
                    slot.restarts += 1
                    self._start(slot)
            elif slot.proc is not None and slot.proc.poll() is not None:
                self._exited(slot, now)
        self._check_ready()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every worker's group (Celery's warm shutdown), SIGKILL what is left after `timeout`."""
        running = [s for s in self._slots if s.proc is not None]
        for slot in running:
            _signal_group(slot.proc, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        for slot in running:
            assert slot.proc is not None
            try:
                slot.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %ss; killing it", slot.spec.name, timeout)
            # The group, not only the leader: a pool child may outlive its parent.
            _signal_group(slot.proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                slot.proc.wait(5)
            if slot.state != "failed":
                self._set(slot, "stopped", "stopped")
        self.release()

    def release(self) -> None:
        for slot in self._slots:
            if slot.lock is not None:
                if slot.proc is not None and slot.proc.poll() is not None:
                    slot.lock.forget()
                slot.lock.release()
                slot.lock = None

    def states(self) -> list[WorkerState]:
        with self._mutex:
            return [
                WorkerState(
                    s.spec.name,
                    s.spec.queues,
                    s.state,
                    s.proc.pid if s.proc is not None else None,
                    s.restarts,
                    s.detail,
                )
                for s in self._slots
            ]

    def pids(self) -> dict[str, int]:
        return {s.spec.name: s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None}

    # -- steps ------------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        out = self._log_file(slot.spec.name)
        try:
            proc = subprocess.Popen(
                self.command(slot.spec),
                env={**os.environ, **slot.spec.env},
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        slot.proc, slot.since = proc, time.monotonic()
        if slot.lock is not None:
            slot.lock.record(proc.pid)
        # Without a probe there is no readiness to wait for: a live process is all we know.
        before = f" after it exited ({slot.last_exit})" if slot.last_exit else ""
        self._set(slot, "starting" if self.probe else "running", f"started (pid {proc.pid}){before}")
        log.info("started worker %s (pid %s) %s", slot.spec.name, proc.pid, slot.spec.env)

    def _exited(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        ran = now - slot.since
        slot.failures = 1 if ran >= self.backoff.stable_after else slot.failures + 1
        how = slot.last_exit = _exit_words(slot.proc.returncode)
        if slot.failures >= self.backoff.give_up_after:
            what = "stopping every worker" if self.give_up == "stop_all" else "not restarting it"
            where = f" (its log: {self.log_dir / (slot.spec.name + '.log')})" if self.log_dir else ""
            message = f"worker {slot.spec.name}: exited {slot.failures} times in a row ({how}); {what}{where}"
            self._set(slot, "failed", message)
            if self.give_up == "stop_all":
                raise LaunchError(message)
            announce(message, logging.ERROR)
            return
        delay = self.backoff.delay(slot.failures)
        slot.retry_at = now + delay
        self._set(slot, "restarting", f"exited ({how}) after {ran:.0f} s; restarting in {delay:g} s")
        announce(f"worker {slot.spec.name}: {slot.detail}", logging.WARNING)

    def _check_ready(self) -> None:
        if self.probe is None:
            return
        waiting = {s.spec.name: s for s in self._slots if s.state in ("starting", "ready", "silent")}
        pids = {name: s.proc.pid for name, s in waiting.items() if s.proc is not None}
        now = time.monotonic()
        starting = any(s.state != "ready" for s in waiting.values())
        if not pids or (not starting and now < self._next_probe):
            return
        self._next_probe = now + self.probe_every
        try:
            seen = self.probe(pids)
        except Exception:  # a database blip: look again next tick
            log.warning("could not read the workers' rows", exc_info=True)
            return
        for name, slot in waiting.items():
            info = seen.get(name)
            if info is not None and slot.state != "ready":
                self._became_ready(slot, info)
            elif info is None and slot.state == "ready":
                self._set(slot, "silent", "running but not heartbeating")
                announce(f"worker {name}: running but not heartbeating", logging.WARNING)

    def _became_ready(self, slot: _Slot, info: dict[str, Any]) -> None:
        was_silent = slot.state == "silent"
        device = device_of(info)
        self._set(slot, "ready", f"ready on {device}")
        if was_silent:
            announce(f"worker {slot.spec.name}: heartbeating again")
            return
        again = f" again (restart {slot.restarts})" if slot.restarts else ""
        announce(f"worker {slot.spec.name}: ready{again} on {device}")
        if device == "CPU" and info.get("torch") and not self._said_no_gpu:
            self._said_no_gpu = True
            announce(NO_GPU_LINE)

    def _set(self, slot: _Slot, state: State, detail: str) -> None:
        with self._mutex:
            slot.state, slot.detail = state, detail

    def _log_file(self, name: str) -> IO[bytes] | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{name}.log"
        with contextlib.suppress(OSError):
            if path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(path, path.with_suffix(".log.1"))
        return path.open("ab")


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd) and SIGINT (Ctrl-C) both mean: stop every worker, then exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def _exit_words(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, even by SIGKILL, so a
    killed launcher never leaves GPU workers behind (Linux; elsewhere a no-op). The
    "parent" is the thread that started the child: the supervisor's, which lives until
    every worker is stopped."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
