"""The base model on this host before `from_pretrained` reads it: the one place to ask.

`DREAMBOT_BASE_MODEL` is a hub id, a local folder or `storage:<prefix>`; every load path
(training, class images, sampling, warm-up) calls `local_base_model` for the folder to read:

* a local folder is used as it is;
* a `storage:` model is copied once to this host by the model cache (`model_cache.py`);
* a hub id is downloaded once (`hub_models.py`): inside a job the download reports to the
  job's progress, so its card shows bytes, speed and time left (`report_downloads_to`, set
  by the job runner); elsewhere it is logged. A worker's warm-up runs `without_downloads`:
  the first job fetches a model that is not here yet, visibly, instead of the worker
  fetching gigabytes unseen while that job waits in the queue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from core.errors import UserFacingError
from core.job_progress import JobPhase, JobProgress
from core.settings import Settings
from gpu_worker.hub_models import Download, OnProgress, find_pulled, pull
from gpu_worker.model_cache import is_storage_model, resolve_base_model

log = logging.getLogger(__name__)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")

Kind = Literal["storage", "folder", "hub"]


class NotDownloaded(UserFacingError):
    """A hub model is not here yet and this code may not fetch it (a worker's warm-up)."""


def model_kind(name: str) -> Kind:
    if is_storage_model(name):
        return "storage"
    if Path(name).expanduser().exists() or not _REPO_ID.match(name):
        return "folder"
    return "hub"


_reporter: ContextVar[Callable[[JobProgress], None] | None] = ContextVar(
    "dreambot_download_reporter", default=None
)
_may_download: ContextVar[bool] = ContextVar("dreambot_may_download", default=True)


@contextmanager
def without_downloads() -> Iterator[None]:
    """Inside, a hub model not here yet is not fetched but raises `NotDownloaded`. A worker
    warms up inside this: the first job fetches the model, with progress on its card,
    instead of the worker fetching gigabytes unseen while that job sits queued."""
    token = _may_download.set(False)
    try:
        yield
    finally:
        _may_download.reset(token)


@contextmanager
def report_downloads_to(progress: Callable[[JobProgress], None]) -> Iterator[None]:
    """Base model downloads inside this block report to a job's `progress(report)`."""
    token = _reporter.set(progress)
    try:
        yield
    finally:
        _reporter.reset(token)


def _to_job(progress: Callable[[JobProgress], None]) -> OnProgress:
    def report(d: Download) -> None:
        eta = round(d.eta) if d.eta is not None else None
        progress(
            JobProgress(phase=JobPhase.DOWNLOADING, step=d.done, total=d.total, speed=round(d.speed), eta=eta)
        )

    return report


def _to_log(repo_id: str) -> OnProgress:
    last = [0.0]

    def report(d: Download) -> None:
        if d.seconds - last[0] >= 10 or d.done == d.total:
            last[0] = d.seconds
            log.info("downloading %s: %d of %d bytes", repo_id, d.done, d.total)

    return report


def local_base_model(name: str, settings: Settings | None = None) -> str:
    """What `from_pretrained` should read for the base model `name`, fetched first if need be.

    The name (a hub id, `storage:models/sd15`) stays what subjects record; only the load
    reads the local copy. Raises `HubUnreachable`/`BaseModelNotFound` (one sentence each)."""
    if settings is None:
        from core.settings import get_settings

        settings = get_settings()
    kind = model_kind(name)
    if kind == "storage":
        return resolve_base_model(settings, name)
    if kind == "folder":
        return name
    found = find_pulled(settings, name)
    if found is not None:
        return str(found.path)
    if not _may_download.get():
        raise NotDownloaded(
            f"The base model {name} is not downloaded yet: the first job downloads it "
            f"(or `dreambot model pull {name}` now)."
        )
    sink = _reporter.get()
    return str(pull(settings, name, on_progress=_to_job(sink) if sink else _to_log(name)).path)
