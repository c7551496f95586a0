"""Hub base models on this host: downloaded once, with progress, or a fast, clear failure.

A hub id is downloaded into `MODEL_CACHE_DIR/hub/cache` (huggingface_hub's own cache
layout, each file checked by it), and only the files diffusers reads for a Stable
Diffusion pipeline: model_index.json, each component's configs and tokenizer files, and
each component's plain weights (safetensors preferred; no fp16/ema variants, no
single-file checkpoints). A complete download is recorded in `hub/pulled/`, so later loads
(`find_pulled`) never touch the network.

Before a download, one short request asks the hub for the model (`PROBE_TIMEOUT` per try,
`PROBE_ATTEMPTS` tries): an unreachable hub fails within seconds with one sentence saying
what to do, instead of huggingface_hub retrying each file with backoff for minutes, and a
missing or gated model is named. During a download the bytes arriving in the cache are
measured every `REPORT_EVERY` seconds and handed to a callback (done, total, speed, time
left). No torch: `dreambot doctor` and `dreambot up` read this too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from core.errors import UserFacingError
from core.settings import Settings
from gpu_worker.model_cache import HUB_FOLDER, cache_root

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 8.0  # seconds for the hub to answer one request before a download
PROBE_ATTEMPTS = 2
REPORT_EVERY = 0.5  # seconds between progress reports while downloading
REVISION = "main"
WEIGHTS = (".safetensors", ".bin")  # in order of preference
SIDE_FILES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece
_SHARD = re.compile(r"-\d{5}-of-\d{5}")


class HubUnreachable(UserFacingError):
    """A hub model is not here and the hub does not answer (`why`: the reason, in short)."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


class BaseModelNotFound(UserFacingError):
    """The hub answered: no such model, a gated or private one, or not a diffusers pipeline."""


@dataclass(frozen=True)
class Download:
    """One progress report: bytes `done` of `total`, `seconds` since the download began."""

    done: int
    total: int
    seconds: float

    @property
    def speed(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.speed if self.speed > 0 else None


OnProgress = Callable[[Download], None]


@dataclass(frozen=True)
class LocalModel:
    path: Path
    bytes: int
    downloaded: int = 0  # bytes fetched by this call (0: it was all here)


class Pulled(BaseModel):
    """`hub/pulled/<org>--<name>@<revision>.json`: a complete download, file by file."""

    repo_id: str
    revision: str
    commit: str
    files: dict[str, int]  # path in the repository -> bytes


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def what_to_do(repo_id: str) -> str:
    return (
        f"run `dreambot model pull {repo_id}` on a machine that can reach it, then point "
        "DREAMBOT_BASE_MODEL at the downloaded folder or `dreambot model publish` it to storage"
    )


def unreachable(repo_id: str, why: str) -> HubUnreachable:
    return HubUnreachable(
        f"The base model {repo_id} is not on this machine and the model hub ({endpoint()}) "
        f"can't be reached ({why}): {what_to_do(repo_id)}.",
        why,
    )


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 100 else text[:99] + "…"


# -- where hub models live ------------------------------------------------------------------


def hub_cache(settings: Settings) -> Path:
    return cache_root(settings) / HUB_FOLDER / "cache"


def _record(settings: Settings, repo_id: str, revision: str) -> Path:
    return cache_root(settings) / HUB_FOLDER / "pulled" / f"{repo_id.replace('/', '--')}@{revision}.json"


def _snapshot(settings: Settings, repo_id: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache(settings) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def find_pulled(settings: Settings, repo_id: str, revision: str = REVISION) -> LocalModel | None:
    """The complete local copy of a hub model, without asking the hub; None if there is none."""
    try:
        record = Pulled.model_validate_json(_record(settings, repo_id, revision).read_bytes())
    except (OSError, ValidationError):
        return None
    folder = _snapshot(settings, repo_id, record.commit)
    for rel, size in record.files.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != size:
            return None
    return LocalModel(folder, sum(record.files.values()))


def select_files(sizes: dict[str, int]) -> list[str]:
    """The files of a hub repository a diffusers pipeline reads (see the module doc)."""
    by_folder: dict[str, list[str]] = {}
    for path in sizes:
        parts = path.split("/")
        if len(parts) == 2:
            by_folder.setdefault(parts[0], []).append(parts[1])
    chosen = ["model_index.json"] if "model_index.json" in sizes else []
    for folder, names in sorted(by_folder.items()):
        weights: list[str] = []
        for ext in WEIGHTS:  # plain weights only: "model.fp16.safetensors" has a second dot
            weights = weights or [n for n in names if n.endswith(ext) and n.count(".") == 1]
        indexes = {_SHARD.sub("", n) + ".index.json" for n in weights}  # sharded weights' index
        side = [
            n for n in names if n.endswith(SIDE_FILES) and (not n.endswith(".index.json") or n in indexes)
        ]
        chosen += [f"{folder}/{n}" for n in sorted(side + weights)]
    return chosen


# -- asking the hub, downloading --------------------------------------------------------------


def probe(
    repo_id: str, revision: str = REVISION, *, attempts: int = PROBE_ATTEMPTS, timeout: float = PROBE_TIMEOUT
) -> str:
    """The commit `revision` of `repo_id` is at, asked with a bounded wait."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        raise unreachable(repo_id, "HF_HUB_OFFLINE is set")
    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(1.0)
        try:
            return str(HfApi().repo_info(repo_id, revision=revision, timeout=timeout).sha)
        except GatedRepoError:
            raise BaseModelNotFound(
                f"The base model {repo_id} is gated on the model hub: accept its terms at "
                f"{endpoint()}/{repo_id} and set HF_TOKEN on this machine, or choose another DREAMBOT_BASE_MODEL."
            ) from None
        except RevisionNotFoundError:
            raise BaseModelNotFound(
                f"The base model {repo_id} has no revision {revision!r} on the model hub."
            ) from None
        except RepositoryNotFoundError:
            raise BaseModelNotFound(
                f"The base model {repo_id} is not on the model hub ({endpoint()}), or it is private (set HF_TOKEN); "
                "check DREAMBOT_BASE_MODEL."
            ) from None
        except HfHubHTTPError as exc:
            why = f"HTTP {exc.response.status_code}" if exc.response is not None else _short(exc)
        except Exception as exc:  # the HTTP client's transport errors: refused, timed out, no DNS
            why = _short(exc)
    raise unreachable(repo_id, why)


def pull(
    settings: Settings, repo_id: str, revision: str = REVISION, on_progress: OnProgress | None = None
) -> LocalModel:
    """Make the hub model complete in this host's cache (asking the hub first); files
    already here are not downloaded again."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    commit = probe(repo_id, revision)
    try:
        tree = HfApi().list_repo_tree(repo_id, recursive=True, revision=commit)
        sizes = {f.path: int(f.size or 0) for f in tree if isinstance(f, RepoFile)}
    except Exception as exc:
        raise unreachable(repo_id, _short(exc)) from None
    files = select_files(sizes)
    if "model_index.json" not in files:
        raise BaseModelNotFound(
            f"{repo_id} on the model hub is not a diffusers pipeline (it has no model_index.json); "
            "set DREAMBOT_BASE_MODEL to a Stable Diffusion 1.x/2.x model."
        )
    snapshot = _snapshot(settings, repo_id, commit)
    missing = [f for f in files if not (snapshot / f).is_file() or (snapshot / f).stat().st_size != sizes[f]]
    todo = sum(sizes[f] for f in missing)
    if missing:
        log.info("downloading base model %s: %d files, %d bytes", repo_id, len(missing), todo)
        _download(settings, repo_id, commit, files, todo, on_progress)
    record = _record(settings, repo_id, revision)
    record.parent.mkdir(parents=True, exist_ok=True)
    part = record.with_suffix(f".{os.getpid()}.part")
    part.write_text(
        Pulled(
            repo_id=repo_id, revision=revision, commit=commit, files={f: sizes[f] for f in files}
        ).model_dump_json()
    )
    os.replace(part, record)  # atomic: another process reads the old record or the new one
    return LocalModel(snapshot, sum(sizes[f] for f in files), todo)


class _Silent(tqdm):
    """huggingface_hub's own bars off: progress is measured and reported by us."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _download(
    settings: Settings, repo_id: str, commit: str, files: list[str], todo: int, on_progress: OnProgress | None
) -> None:
    """snapshot_download in a thread while this one measures and reports the bytes arriving.
    The caller's thread reports, so a job's progress (and its cancel check) stays in it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    blobs = _snapshot(settings, repo_id, commit).parents[1] / "blobs"
    before = _folder_bytes(blobs)
    failed: list[BaseException] = []

    def work() -> None:
        try:
            snapshot_download(
                repo_id,
                revision=commit,
                cache_dir=hub_cache(settings),
                allow_patterns=files,
                tqdm_class=_Silent,
            )
        except BaseException as exc:  # handed to the caller's thread below
            failed.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=work, name=f"download {repo_id}", daemon=True)
    thread.start()
    report = on_progress or (lambda d: None)
    report(Download(0, todo, 0.0))
    while thread.is_alive():
        thread.join(REPORT_EVERY)
        if thread.is_alive():
            report(
                Download(min(todo, max(0, _folder_bytes(blobs) - before)), todo, time.monotonic() - started)
            )
    if not failed:
        report(Download(todo, todo, time.monotonic() - started))
        return
    exc = failed[0]
    if isinstance(exc, UserFacingError):
        raise exc
    if isinstance(exc, GatedRepoError | RepositoryNotFoundError):
        probe(repo_id, commit)  # says which, in words
    raise unreachable(repo_id, f"the download stopped: {_short(exc)}") from None


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    except OSError:
        return 0
