"""Base models kept in dreambot's storage, copied once to each GPU host's local disk.

`DREAMBOT_BASE_MODEL` names a base model three ways:

* a hub id (`stable-diffusion-v1-5/stable-diffusion-v1-5`): downloaded once into
  `MODEL_CACHE_DIR/hub/` by `gpu_worker/hub_models.py` (`model_fetch.py`, which every
  load path calls, asks for it);
* a local folder: used in place, unchanged;
* `storage:<key prefix>` (`storage:models/sd15`): a model published into the deployment's
  storage (local folder or S3) by `publish_base_model` / `dreambot model publish`, next
  to a `manifest.json` listing every file's sha256 and size. A worker copies it once into
  `MODEL_CACHE_DIR/<safe name>-<manifest digest>/` and loads it from there.

The copy is made as safely as the LoRA cache's (`gpu_worker.lora_cache`): files are
downloaded into a hidden `.part` folder, each checked against the manifest, and the
folder is renamed into place only when all are right, so a half or damaged copy never
has the final name. One file lock per model lets the train and sample workers of every
GPU on a host share the cache: the first downloads, the others wait and reuse it. The
manifest's digest is part of the folder name, so re-publishing a model under the same
name gives a new folder and never changes files under a process reading the old one.

The cache is bounded by `MODEL_CACHE_BYTES`, evicting whole model folders, least recently
resolved first. A model is "in use" only while `from_pretrained` reads it (seconds; then
the weights are in memory, and on POSIX a file deleted while open stays readable), and a
process reads a model right after resolving it. So instead of a shared in-use lock we
never evict the model being resolved nor the most recently resolved other one
(`KEEP_RECENT`): a process still loading a model has resolved it after every older
model, so it is protected unless two other models were resolved on the host since. The
bound is then exceeded rather than break a load; size it for two models at least.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field, ValidationError, field_validator

from core.errors import NotFound, StorageKeyError, UserFacingError
from core.settings import Settings
from core.storage import CHUNK, ChecksumMismatch, Storage, storage_from_settings, validate_key

log = logging.getLogger(__name__)

STORAGE_SCHEME = "storage:"
MANIFEST = "manifest.json"
LAST_USED = ".last-used"  # touched on every resolve; its mtime orders the LRU
HUB_FOLDER = "hub"  # hub base models (gpu_worker/hub_models.py): never evicted as a storage copy
KEEP_RECENT = 1  # most recently resolved other models never evicted (see the module doc)


class BaseModelUnavailable(UserFacingError):
    """A `storage:` base model that is not (completely) published, or a bad name."""


class DamagedBaseModel(UserFacingError):
    """A stored base model whose bytes do not match its manifest."""


class ManifestEntry(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """`<prefix>/manifest.json`: every file of the model, by path relative to the prefix."""

    format: int = 1
    files: dict[str, ManifestEntry]

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, files: dict[str, ManifestEntry]) -> dict[str, ManifestEntry]:
        for rel in files:  # a manifest must never make us write outside the model folder
            validate_key(rel)
        if not files:
            raise ValueError("a manifest lists at least one file")
        return files

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json")["files"], sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files.values())


def is_storage_model(name: str) -> bool:
    return name.startswith(STORAGE_SCHEME)


def key_prefix(name: str) -> str:
    """`storage:models/sd15` (or plain `models/sd15`) -> `models/sd15`, checked."""
    prefix = name.removeprefix(STORAGE_SCHEME).strip("/")
    try:
        return validate_key(prefix)
    except StorageKeyError:
        raise BaseModelUnavailable(
            f"{name!r} is not a usable storage name for a base model; expected something like "
            "storage:models/sd15"
        ) from None


def _safe_name(prefix: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", prefix).strip("._") or "model"


def _sha256_copy(src: BinaryIO, dest: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


@dataclass(frozen=True)
class Resolved:
    path: Path
    downloaded: bool  # False: an earlier copy on this host was reused


class ModelCache:
    """Verified local copies of `storage:` base models, about `max_bytes` in all."""

    def __init__(self, root: Path, storage: Storage, max_bytes: int) -> None:
        self.root = Path(root)
        self.locks = self.root / ".locks"
        self.locks.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.max_bytes = max_bytes

    def lock_for(self, folder_name: str) -> FileLock:
        return FileLock(str(self.locks / f"{folder_name}.lock"))

    def resolve(self, prefix: str) -> Resolved:
        """A local folder holding exactly the model published under `prefix`."""
        name = f"{STORAGE_SCHEME}{prefix}"
        manifest = self._manifest(prefix, name)
        folder = self._folder(prefix, manifest)
        with self.lock_for(folder.name):
            self._drop_partials(folder.name)
            downloaded = not self._complete(folder, manifest)
            if downloaded:
                if folder.exists():  # files lost or cut short behind our back: start over
                    log.warning("model cache: %s is incomplete; copying it again", folder.name)
                    self._remove(folder)
                self._download(prefix, name, manifest, folder)
            _touch(folder / LAST_USED)
        if downloaded:
            self._trim(keep=folder)
        return Resolved(folder, downloaded)

    def manifest(self, prefix: str) -> Manifest:
        """The manifest published under `prefix` (one-sentence errors when it is not)."""
        return self._manifest(prefix, f"{STORAGE_SCHEME}{prefix}")

    def folder_for(self, prefix: str) -> Path:
        """Where the model now published under `prefix` is (or will be) kept on this host."""
        return self._folder(prefix, self._manifest(prefix, f"{STORAGE_SCHEME}{prefix}"))

    def _folder(self, prefix: str, manifest: Manifest) -> Path:
        return self.root / f"{_safe_name(prefix)}-{manifest.digest[:12]}"

    def _manifest(self, prefix: str, name: str) -> Manifest:
        try:
            raw = self.storage.read_bytes(f"{prefix}/{MANIFEST}")
        except NotFound:
            raise BaseModelUnavailable(
                f"The base model {name} is not in storage (no {prefix}/{MANIFEST}). Publish it "
                f"first: dreambot model publish MODEL_FOLDER --as {prefix}"
            ) from None
        except ChecksumMismatch:
            raise DamagedBaseModel(
                f"The manifest of the base model {name} is damaged in storage; publish it again."
            ) from None
        try:
            return Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise DamagedBaseModel(
                f"{prefix}/{MANIFEST} is not a dreambot model manifest ({exc.error_count()} errors); "
                f"publish the model again with: dreambot model publish MODEL_FOLDER --as {prefix}"
            ) from None

    @staticmethod
    def _complete(folder: Path, manifest: Manifest) -> bool:
        # Sizes only: every file was hashed when it arrived, and re-hashing gigabytes on
        # every job would cost seconds. A cut-short file (a crash, a full disk) fails here.
        if not folder.is_dir():
            return False
        for rel, entry in manifest.files.items():
            path = folder / rel
            if not path.is_file() or path.stat().st_size != entry.size:
                return False
        return True

    def _download(self, prefix: str, name: str, manifest: Manifest, folder: Path) -> None:
        part = self.root / f".{folder.name}.{uuid.uuid4().hex}.part"
        log.info("model cache: copying %s (%d files, %d bytes)", name, len(manifest.files),
                 manifest.total_bytes)  # fmt: skip
        try:
            for rel, entry in sorted(manifest.files.items()):
                dest = part / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with self.storage.open(f"{prefix}/{rel}") as src:
                        sha, size = _sha256_copy(src, dest)
                except NotFound:
                    raise DamagedBaseModel(
                        f"The base model {name} is incomplete in storage: {rel} is missing. "
                        f"Publish it again with: dreambot model publish MODEL_FOLDER --as {prefix}"
                    ) from None
                except ChecksumMismatch:  # the store noticed first (S3 keeps each object's sha256)
                    sha, size = "", -1
                if sha != entry.sha256 or size != entry.size:
                    raise DamagedBaseModel(
                        f"The base model {name} is damaged in storage: {rel} does not match its "
                        f"manifest (sha256 {entry.sha256[:12]}…, {entry.size} bytes). Publish it "
                        f"again with: dreambot model publish MODEL_FOLDER --as {prefix}"
                    )
            os.replace(part, folder)  # a directory rename: the whole model appears at once
        finally:
            shutil.rmtree(part, ignore_errors=True)

    def _drop_partials(self, folder_name: str) -> None:
        # Downloads of one model run under its lock, so a `.part` of it seen while holding
        # the lock belongs to a process that died mid-download.
        for part in self.root.glob(f".{folder_name}.*.part"):
            shutil.rmtree(part, ignore_errors=True)

    def _remove(self, folder: Path) -> None:
        # Rename first: the final name disappears at once, the slow delete follows.
        trash = self.root / f".{folder.name}.{uuid.uuid4().hex}.trash"
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def models(self) -> list[Path]:
        """Cached model folders, least recently resolved first."""
        folders = [
            p
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name != HUB_FOLDER
        ]
        return sorted(folders, key=_last_used)

    def _trim(self, keep: Path) -> None:
        with FileLock(str(self.locks / "evict.lock")):
            for trash in self.root.glob(".*.trash"):  # left by a process killed mid-delete
                shutil.rmtree(trash, ignore_errors=True)
            models = self.models()
            others = [m for m in models if m != keep]
            protected = {keep, *others[len(others) - KEEP_RECENT :]}
            total = sum(_folder_bytes(m) for m in models)
            for victim in models:
                if total <= self.max_bytes:
                    break
                if victim in protected:
                    continue
                lock = self.lock_for(victim.name)
                try:
                    lock.acquire(timeout=0)  # someone is resolving it right now: keep it
                except Timeout:
                    continue
                try:
                    size = _folder_bytes(victim)
                    self._remove(victim)
                finally:
                    lock.release()
                total -= size
                log.info("model cache: evicted %s from disk", victim.name)


def _touch(path: Path) -> None:
    # An explicit nanosecond time: the kernel's own "now" for touch is only as fine as a
    # clock tick, so two resolves milliseconds apart would tie and the LRU order be lost.
    now = time.time_ns()
    path.touch()
    os.utime(path, ns=(now, now))


def _last_used(folder: Path) -> int:
    try:
        return (folder / LAST_USED).stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cache_root(settings: Settings) -> Path:
    return Path(settings.model_cache_dir or (Path(settings.data_dir) / "model-cache"))


def model_cache(settings: Settings) -> ModelCache:
    """The base model cache of these settings (cheap; the folder is the state)."""
    return ModelCache(cache_root(settings), storage_from_settings(settings), settings.model_cache_bytes)


def resolve_base_model(settings: Settings, name: str) -> str:
    """What `from_pretrained` should load for the base model `name`.

    Hub ids and local folders come back unchanged: diffusers/huggingface_hub keep hub
    downloads in their own cache, and a local folder needs no copy. A `storage:` model
    comes back as its verified local copy (downloaded once per host).
    """
    if not is_storage_model(name):
        return name
    return str(model_cache(settings).resolve(key_prefix(name)).path)


def publish_base_model(
    settings: Settings,
    folder: Path,
    prefix: str,
    on_file: Callable[[str, int], None] = lambda rel, size: None,
) -> Manifest:
    """Upload a diffusers model folder to storage under `prefix`, manifest last.

    The manifest is written after every file, so a worker never sees a half-published
    model as complete; keys under `prefix` left from an earlier publish are then removed.
    Hidden files and folders (`.cache/` of a hub download) are skipped.
    """
    folder, prefix = Path(folder), key_prefix(prefix)
    if not (folder / "model_index.json").is_file():
        raise UserFacingError(f"{folder} is not a diffusers model folder (it has no model_index.json).")
    storage = storage_from_settings(settings)
    files: dict[str, ManifestEntry] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() == MANIFEST:
            continue
        size = path.stat().st_size
        with path.open("rb") as f:
            sha = storage.put(f"{prefix}/{rel.as_posix()}", f)
        files[rel.as_posix()] = ManifestEntry(sha256=sha, size=size)
        on_file(rel.as_posix(), size)
    manifest = Manifest(files=files)
    storage.put(f"{prefix}/{MANIFEST}", manifest.model_dump_json(indent=1).encode())
    for key in list(storage.list(f"{prefix}/")):
        name = key.removeprefix(f"{prefix}/")
        if name != MANIFEST and name not in files:
            storage.delete(key)
    return manifest
