"""Local storage: keys stay inside the root, writes are atomic, listing and deletion."""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

import pytest

from core.errors import NotFound, StorageKeyError
from core.storage import LocalStorage, sha256_bytes


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def test_put_open_exists_delete(storage: LocalStorage) -> None:
    digest = storage.put("subjects/1/photos/0.jpg", b"hello")
    assert digest == sha256_bytes(b"hello")
    assert storage.exists("subjects/1/photos/0.jpg")
    assert storage.read_bytes("subjects/1/photos/0.jpg") == b"hello"
    storage.put("subjects/1/photos/0.jpg", io.BytesIO(b"replaced"))
    assert storage.read_bytes("subjects/1/photos/0.jpg") == b"replaced"
    assert storage.delete("subjects/1/photos/0.jpg") is True
    assert storage.delete("subjects/1/photos/0.jpg") is False
    assert not storage.exists("subjects/1/photos/0.jpg")
    with pytest.raises(NotFound):
        storage.open("subjects/1/photos/0.jpg")


def test_list_and_delete_prefix(storage: LocalStorage) -> None:
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        storage.put(key, key.encode())
    assert list(storage.list("a/")) == ["a/1", "a/2"]
    assert list(storage.list()) == ["a/1", "a/2", "ab/3", "b/4"]
    assert storage.delete_prefix("a/") == 2
    assert list(storage.list()) == ["ab/3", "b/4"]


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "", "a\\b", "C:/x", ".tmp/x", "a/.."],
)
def test_refuses_keys_outside_root(storage: LocalStorage, key: str) -> None:
    with pytest.raises(StorageKeyError):
        storage.put(key, b"x")
    with pytest.raises(StorageKeyError):
        storage.exists(key)


def test_refuses_symlink_escape(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, storage.root / "link")
    with pytest.raises(StorageKeyError):
        storage.put("link/x", b"x")
    assert not (outside / "x").exists()


class _Exploding(io.RawIOBase):
    """A reader that fails half way, like a dropped upload."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise ConnectionError("connection dropped")
        return b"x" * 1024


def test_failed_write_leaves_nothing(storage: LocalStorage) -> None:
    storage.put("model.bin", b"old complete file")
    with pytest.raises(ConnectionError):
        storage.put("model.bin", _Exploding())
    assert storage.read_bytes("model.bin") == b"old complete file"
    with pytest.raises(ConnectionError):
        storage.put("new.bin", _Exploding())
    assert not storage.exists("new.bin")
    assert list(storage.tmp.iterdir()) == []


def _write_then_die(root: str) -> None:
    class DieMidway(io.RawIOBase):
        sent = 0

        def read(self, n: int = -1) -> bytes:
            if self.sent:
                os._exit(9)  # the process dies mid-write: no cleanup runs at all
            self.sent += 1
            return b"partial"

    LocalStorage(root).put("crash.bin", DieMidway())


def test_crash_mid_write_never_publishes_half_a_file(storage: LocalStorage) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(storage.root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    assert not storage.exists("crash.bin")
    assert list(storage.list()) == []  # the leftover temp file is not a key
