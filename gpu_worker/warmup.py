"""Warm before the first claim: a worker loads its model and builds its graphs first.

`gpu_worker.app` calls `warm_worker` in the process that will run the jobs (the Celery
pool child, or the worker itself with the solo pool) before that process takes a task,
so no person's job pays for a model load or a compile. Each queue the worker consumes
has its warm-up: `sample` loads the resident pipeline and compiles/captures the shapes of
`DREAMBOT_SAMPLE_WARM` (`gpu_worker.pipelines.warm`); `train` calls
`gpu_worker.training.warm.warm`.

The worker row says where it is (`state`: starting -> warming -> ready, with `warming_at`
and `ready_at` from the database clock, and `warmup`: the device, what is being warmed
now, what was warmed, seconds), which `/metrics`, `dreambot doctor`, the dashboard and the
playground read. A warm-up that fails is logged in one line and the worker serves anyway
(eager, loading on first use): a worker that cannot warm is slower, not broken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import update

from core.db import insert_or_merge, rows_changed, session_scope
from core.dbclock import db_now
from core.models import Worker
from core.queue import SAMPLE, TRAIN
from core.settings import Settings
from gpu_worker.model_fetch import without_downloads

log = logging.getLogger(__name__)
Report = Callable[[str], None]  # a short phrase: what is being warmed now
Warmer = Callable[[Settings, Report], dict[str, Any]]


def warm_sample_queue(settings: Settings, report: Report) -> dict[str, Any]:
    from gpu_worker.pipelines import get_resident, warm

    report(f"loading {settings.base_model}")
    return warm(get_resident(settings), settings, report)


def warm_train_queue(settings: Settings, report: Report) -> dict[str, Any]:
    from gpu_worker.training.warm import warm

    return warm(settings, report)


WARMERS: dict[str, Warmer] = {SAMPLE: warm_sample_queue, TRAIN: warm_train_queue}


def base_queues(settings: Settings, consumed: Iterable[str]) -> list[str]:
    """`train`/`sample` for the (prefixed) queue names a worker consumes, in warm-up order."""
    names = set(consumed)
    return [q for q in (SAMPLE, TRAIN) if settings.queue_name(q) in names or q in names]


def describe_device() -> dict[str, Any]:
    """Where this process runs its models (it may initialise CUDA: call it in that process)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu"}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"device": f"cuda:{index}", "gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1)}


def record_state(settings: Settings, name: str, state: str, warmup: dict[str, Any], queues: str = "") -> None:
    """Write the warm-up state on the worker row (creating it if the worker has not yet)."""
    stamp = {"warming": "warming_at", "ready": "ready_at"}.get(state)
    values: dict[str, Any] = {"state": state, "warmup": warmup, "last_seen_at": db_now()}
    if stamp:
        values[stamp] = db_now()
    if state == "starting":  # a restart: the last run's times no longer apply
        values.update(warming_at=None, ready_at=None)
    with session_scope(settings) as session:
        if rows_changed(session, update(Worker).where(Worker.name == name).values(**values)):
            return
        row = dict(name=name, hostname=name.partition("@")[2], queues=queues, info={}, **values)
        session.execute(insert_or_merge(session, Worker).values(**row).on_conflict_do_update(
            index_elements=["name"], set_=values))  # fmt: skip


class _Progress:
    """The row's `warmup` while warming: the current step, refreshed every heartbeat so the
    worker stays online through a long compile."""

    def __init__(self, settings: Settings, name: str, queues: str, details: dict[str, Any]) -> None:
        self.settings, self.name, self.queues, self.details = settings, name, queues, details
        self.done = threading.Event()
        self._lock = threading.Lock()

    def report(self, doing: str) -> None:
        log.info("warming: %s", doing)
        with self._lock:
            self.details["doing"] = doing
            self._write()

    def _write(self) -> None:
        try:
            record_state(self.settings, self.name, "warming", dict(self.details), self.queues)
        except Exception as exc:  # the row is a report: never fail the warm-up for it
            log.warning("could not record the warm-up state: %s", exc)

    def keep_alive(self) -> None:
        while not self.done.wait(self.settings.heartbeat_interval):
            with self._lock:
                self._write()


def warm_worker(settings: Settings, name: str, consumed: Iterable[str], queues: str = "") -> dict[str, Any]:
    """Warm every queue this worker consumes, recording `warming` then `ready`."""
    started = time.monotonic()
    details: dict[str, Any] = {**describe_device(), "queues": {}}
    progress = _Progress(settings, name, queues, details)
    progress.report("starting")
    beat = threading.Thread(target=progress.keep_alive, name="warmup-heartbeat", daemon=True)
    beat.start()
    try:
        for queue in base_queues(settings, consumed):
            details["queues"][queue] = _warm_one(queue, settings, progress.report)
    finally:
        progress.done.set()
        beat.join()
    details.pop("doing", None)
    details["seconds"] = round(time.monotonic() - started, 2)
    record_state(settings, name, "ready", details, queues)
    log.info("worker %s ready on %s after %.1fs of warm-up", name, details["device"], details["seconds"])
    return details


def _warm_one(queue: str, settings: Settings, report: Report) -> dict[str, Any]:
    start = time.monotonic()
    try:
        with without_downloads():  # a hub model not here yet: the first job fetches it, visibly
            done = WARMERS[queue](settings, report)
    except Exception as exc:
        log.warning("warm-up of the %s queue failed; serving without it: %s", queue, exc)
        done = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {**done, "seconds": round(time.monotonic() - start, 2)}
