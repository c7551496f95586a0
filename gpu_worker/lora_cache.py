"""People's LoRAs: a verified local disk cache, and a bounded set of resident adapters.

Two levels, so the hundredth person's dog costs no more than the first:

* `LoraDiskCache` keeps adapter files fetched from storage under the worker's data folder,
  named by their sha256 and checked against it before use; a damaged copy is fetched
  again, a damaged original is refused. The folder is bounded in bytes, least recently
  used first out. A file lock makes it safe for several worker processes on one host
  (the train and sample workers of every GPU share one folder): one fetch at a time, no
  half-written file ever under its final name, and leftovers of a killed process are
  removed. A path handed out was used last, so it is evicted last: size the bound for at
  least (worker processes on the host) x (adapters in one job) of the largest files.
* `gpu_worker.resident_adapters` keeps up to `capacity` adapters in memory beside the
  resident pipeline and merges the active ones into its weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from core.errors import NotFound, UserFacingError
from core.storage import CHUNK, ChecksumMismatch, Storage

log = logging.getLogger(__name__)
SUFFIX = ".safetensors"


class DamagedAdapter(UserFacingError):
    """A stored adapter whose bytes do not match the checksum recorded at training."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LoraDiskCache:
    """Verified local copies of stored adapter files, at most `max_bytes` in all."""

    def __init__(self, root: Path, storage: Storage, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.max_bytes = max_bytes
        self._lock = FileLock(str(self.root / ".lock"))

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / f"{sha256}{SUFFIX}"

    def get(self, key: str, sha256: str, what: str = "this subject") -> Path:
        """A local path whose content is exactly `sha256`, fetched from `key` if needed."""
        path = self.path_for(sha256)
        with self._lock:
            self._drop_partials()
            if path.is_file():
                if file_sha256(path) == sha256:
                    # mtime = last use, for the LRU; an explicit ns time, since the kernel's
                    # own "now" is a clock tick and two uses ms apart would tie.
                    now = time.time_ns()
                    os.utime(path, ns=(now, now))
                    return path
                log.warning("lora cache: %s is damaged; fetching it again from %s", path.name, key)
                path.unlink()
            self._fetch(key, sha256, path, what)
            self._trim(keep=path)
        return path

    def _fetch(self, key: str, sha256: str, path: Path, what: str) -> None:
        tmp = self.root / f".{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            try:
                src = self.storage.open(key)
            except NotFound:
                raise DamagedAdapter(
                    f"The trained model for {what} is missing from storage; please train it again."
                ) from None
            try:
                with src, tmp.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                damaged = digest.hexdigest() != sha256
            except ChecksumMismatch:  # the store noticed first (S3 keeps each object's sha256)
                damaged = True
            if damaged:
                raise DamagedAdapter(
                    f"The trained model for {what} is damaged (its checksum does not match); "
                    "please train it again."
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_partials(self) -> None:
        # Fetches run under the lock, so a `.part` seen while holding it belongs to a
        # process that died mid-download: it is garbage, never a file being written.
        for part in self.root.glob(".*.part"):
            part.unlink(missing_ok=True)

    def _trim(self, keep: Path) -> None:
        files = sorted(self.root.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
            log.info("lora cache: evicted %s from disk", old.name)

    def cached(self) -> list[str]:
        """The sha256 digests held on disk now."""
        return sorted(p.name.removesuffix(SUFFIX) for p in self.root.glob(f"*{SUFFIX}"))


@dataclass(frozen=True)
class AdapterRef:
    """One adapter to activate: its pipeline name and where its verified file is."""

    name: str
    path: Path
    weight: float = 1.0


def adapter_name(subject_id: int, sha256: str) -> str:
    # The digest is part of the name, so a retrained subject never reuses stale weights.
    return f"s{subject_id}_{sha256[:12]}"
