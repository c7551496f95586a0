"""The storage interface every backend fills in (`core.storage.LocalStorage`,
`core.storage_s3.S3Storage`) and the pieces they share: key validation, chunking, checksums.
A module of its own so a backend can import it without importing the factory that picks
the backend (`core.storage.storage_from_settings`)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

from core.errors import DreambotError, StorageKeyError

CHUNK = 1024 * 1024


class ChecksumMismatch(DreambotError):
    """Bytes read back from storage do not match the sha256 recorded when they were written."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise `StorageKeyError`."""
    if not key or "\\" in key or "\x00" in key:
        raise StorageKeyError(f"bad storage key {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise StorageKeyError(f"storage key must be relative, got {key!r}")
    if any(part in ("..", ".", "") for part in key.split("/")):
        raise StorageKeyError(f"storage key must not contain '.', '..' or '//': {key!r}")
    return key


class Storage(ABC):
    """put / open / exists / delete / list by key."""

    @abstractmethod
    def put(self, key: str, data: bytes | BinaryIO) -> str:
        """Store `data` under `key` atomically; returns its sha256 hex digest."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary reader for `key`; raises `NotFound` when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove `key`; False when it was not there."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with `prefix`, in sorted order."""

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under `prefix`; returns how many."""
        keys = list(self.list(prefix))
        return sum(1 for key in keys if self.delete(key))


def chunks(data: bytes | BinaryIO) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
        return
    while chunk := data.read(CHUNK):
        yield chunk


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
