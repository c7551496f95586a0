"""The worker's Celery app: `celery -A gpu_worker.app worker` or `dreambot worker`.

Settings are read when the worker starts. The worker row is written before the pool
starts (`starting`); then the process that will run the jobs (the pool child, or the
worker itself with `--pool solo`) warms up (`gpu_worker.warmup`: loads its model, builds
its graphs) and only then takes tasks (`ready`). Nothing touches CUDA at import or in
the parent before it forks.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from sqlalchemy import update

from core.db import dispose_engines, insert_or_merge, session_scope
from core.dbclock import db_now
from core.logs import install_celery_hooks
from core.models import Worker
from core.queue import make_celery
from core.settings import get_settings
from gpu_worker.warmup import record_state

log = logging.getLogger(__name__)
settings = get_settings()
install_celery_hooks(settings)  # our log format, and job_id on every line of a task
app = make_celery(settings)
app.autodiscover_tasks(["gpu_worker"], related_name="tasks", force=True)
# The pool child warms up (a model load, compiles: minutes when cold) before it says it is
# up; Celery's default would kill it after 4 s of that.
app.conf.worker_proc_alive_timeout = float(max(3600, settings.train_time_limit))

_presence_stop = threading.Event()
_identity: tuple[str, str] | None = None  # (worker name, its queues), set before the pool forks
_forks = True  # the jobs run in forked pool children (prefork), not in this process


@worker_init.connect
def _on_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: the row says `starting` (not an old `ready`)."""
    global _identity, _forks
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    _identity = (sender.hostname, queues)
    _forks = "prefork" in str(sender.pool_cls).lower()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        record_state(settings, sender.hostname, "starting", {}, queues)
    except Exception:
        log.warning("could not record worker %s as starting", sender.hostname, exc_info=True)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pooled connections must never be shared across fork.
    dispose_engines()
    if _identity is None:  # not started as a worker (nothing to warm for)
        return
    from gpu_worker.warmup import warm_worker

    name, queues = _identity
    try:  # before this returns, this process takes no task: the first claim comes after `ready`
        warm_worker(settings, name, queues.split(","), queues)
    except Exception:
        log.exception("warm-up of %s failed; taking jobs without it", name)


def _record_presence(name: str, queues: str, info: dict[str, Any]) -> None:
    with session_scope(settings) as session:
        stmt = insert_or_merge(session, Worker).values(
            name=name, hostname=info.get("hostname", ""), queues=queues, info=info
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"queues": queues, "info": info, "started_at": db_now(), "last_seen_at": db_now()},
            )
        )


def _presence_loop(name: str) -> None:
    while not _presence_stop.wait(settings.heartbeat_interval):
        try:
            with session_scope(settings) as session:
                session.execute(update(Worker).where(Worker.name == name).values(last_seen_at=db_now()))
        except Exception:
            log.warning("could not record worker presence", exc_info=True)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from gpu_worker.selftest import describe_machine

    name = sender.hostname
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    # A fresh host with S3 storage may have no data folder yet (it holds the caches).
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # A parent that touched CUDA would hand broken CUDA to every child it forks later (a
    # restarted pool child): then the GPUs are described by the child's warm-up instead.
    # The pid lets a launcher tell the worker it started from one an earlier run left behind.
    info = {**describe_machine(str(settings.data_dir), probe_gpus=not _forks), "pid": os.getpid()}
    _record_presence(name, queues, info)
    threading.Thread(target=_presence_loop, args=(name,), daemon=True).start()
    log.info("worker %s ready on %s", name, queues)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _presence_stop.set()
