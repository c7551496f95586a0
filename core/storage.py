"""Blob storage by key: photos, LoRAs, checkpoints, images.

Keys are relative, slash-separated paths (`subjects/12/photos/3.jpg`). `LocalStorage`
writes atomically (temporary file, fsync, rename), so a reader sees the whole file or
nothing, and it refuses keys that are absolute or climb out of its root. `Storage` is
the interface; `core.storage_s3.S3Storage` fills it in for `s3://bucket/prefix` URLs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from core.errors import NotFound, StorageKeyError
from core.settings import Settings
from core.storage_api import CHUNK, ChecksumMismatch, Storage, chunks, sha256_bytes, validate_key

__all__ = [  # the interface is re-exported: callers import storage from here
    "CHUNK",
    "ChecksumMismatch",
    "LocalStorage",
    "Storage",
    "sha256_bytes",
    "storage_from_settings",
    "validate_key",
]


class LocalStorage(Storage):
    """Storage in a local folder. Temporary files live in `<root>/.tmp`, never under a key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root) or path.is_relative_to(self.tmp):
            raise StorageKeyError(f"storage key escapes the storage folder: {key!r}")
        return path

    def put(self, key: str, data: bytes | BinaryIO) -> str:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix=f"{uuid.uuid4().hex}-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks(data):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, final)  # atomic on POSIX: whole file or nothing
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"nothing stored under {key!r}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty(path.parent)
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != self.tmp]
            for name in filenames:
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def _prune_empty(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def clear(self) -> None:
        """Delete everything (tests)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)


def storage_from_settings(settings: Settings) -> Storage:
    url = settings.resolved_storage_url
    if url.startswith("s3://"):
        from core.storage_s3 import s3_storage_from_settings  # boto3 only where S3 is used

        return s3_storage_from_settings(settings)
    return LocalStorage(url.removeprefix("file://"))
