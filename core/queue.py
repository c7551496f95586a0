"""The Celery app, queue names and task names. Messages carry a job id and nothing else.

`gpu_worker` registers its tasks on the app from `make_celery`; `bot` only sends by
name (`send_job`), so a chat host never imports torch.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu import Queue

from core.enums import JobKind
from core.fs_transport import TRANSPORT
from core.settings import Settings

TRAIN, SAMPLE = "train", "sample"
TASK_NAMES = {
    JobKind.TRAIN: "gpu_worker.train",
    JobKind.SAMPLE: "gpu_worker.sample",
    JobKind.SELFTEST: "gpu_worker.selftest",
}
DEFAULT_QUEUE = {JobKind.TRAIN: TRAIN, JobKind.SAMPLE: SAMPLE, JobKind.SELFTEST: SAMPLE}

_apps: dict[str, Celery] = {}
_lock = threading.Lock()


def _transport_options(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    if url.startswith("filesystem"):
        folder = settings.broker_folder.resolve()
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.broker_poll_interval,
        }
    if url.startswith("redis"):
        # An unacked message comes back after the visibility timeout; it must outlast the
        # longest training, or a second worker would start the same job (the lease would
        # stop it, but it would waste a GPU).
        return {
            "visibility_timeout": settings.train_time_limit + 3600,
            "polling_interval": settings.broker_poll_interval,
        }
    return {}


def make_celery(settings: Settings) -> Celery:
    """A configured Celery app for these settings (no tasks registered)."""
    train_q, sample_q = settings.queue_name(TRAIN), settings.queue_name(SAMPLE)
    app = Celery("dreambot", broker=settings.resolved_broker_url, set_as_current=False)
    is_filesystem = settings.resolved_broker_url.startswith("filesystem")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(train_q), Queue(sample_q)],
        task_default_queue=sample_q,
        task_routes={TASK_NAMES[JobKind.TRAIN]: {"queue": train_q}},
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # The filesystem transport has no broadcast for remote control or events.
        worker_enable_remote_control=not is_filesystem,
        worker_send_task_events=not is_filesystem,
        task_send_sent_event=not is_filesystem,
        worker_hijack_root_logger=False,
    )
    if is_filesystem:  # kombu's own writes messages in place, which a reader can catch half-done
        app.conf.broker_transport = TRANSPORT
    return app


def get_celery(settings: Settings) -> Celery:
    """The process-wide app for these settings (for sending)."""
    key = f"{settings.resolved_broker_url}|{settings.broker_folder}|{settings.queue_prefix}"
    with _lock:
        if key not in _apps:
            _apps[key] = make_celery(settings)
        return _apps[key]


def send_job(settings: Settings, kind: JobKind, job_id: int, queue: str) -> None:
    """Ring the doorbell for job `job_id`. The database row is the promise, not this."""
    get_celery(settings).send_task(TASK_NAMES[kind], args=[job_id], queue=queue)
