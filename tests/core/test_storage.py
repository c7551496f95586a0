"""Blob storage: one suite, run on a local folder and on an S3-compatible server over HTTP.

The S3 backend talks to moto's standalone server (real HTTP on 127.0.0.1) through boto3.
Tests that only make sense for a folder (symlinks, a process dying mid-write, the
`.tmp` folder) stay local; the checksum-on-read test is S3's own.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from core.errors import DreambotError, NotFound, StorageKeyError
from core.storage import LocalStorage, Storage, sha256_bytes, storage_from_settings
from core.storage_s3 import ChecksumMismatch, S3Storage
from tests.helpers.profile import make_test_settings
from tests.helpers.s3 import S3Server

MiB = 1024 * 1024
BIG = 5 * MiB  # S3's smallest multipart part: the S3 test storage goes multipart above this


def _s3_storage(server: S3Server, bucket: str, prefix: str = "deploy-a") -> S3Storage:
    settings = make_test_settings(Path("unused"), **server.settings_overrides(bucket, prefix))
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    # Small parts and pages, so a test exercises multipart uploads and pagination.
    return S3Storage(
        bucket, prefix, client=storage.client, multipart_threshold=BIG, part_size=BIG, page_size=2
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    server: S3Server = request.getfixturevalue("s3_server")
    return _s3_storage(server, server.new_bucket())


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def leftovers(storage: Storage) -> list[str]:
    """Half-written state a backend could leave behind: temp files / open multipart uploads."""
    if isinstance(storage, LocalStorage):
        return [p.name for p in storage.tmp.iterdir()]
    assert isinstance(storage, S3Storage)
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


# -- the shared suite ----------------------------------------------------------------------


def test_put_open_exists_delete(storage: Storage) -> None:
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


def test_empty_blob_and_partial_reads(storage: Storage) -> None:
    assert storage.put("empty", b"") == sha256_bytes(b"")
    assert storage.read_bytes("empty") == b""
    storage.put("ten", b"0123456789")
    with storage.open("ten") as f:
        assert f.read(4) == b"0123"
        assert f.read() == b"456789"


def test_list_and_delete_prefix(storage: Storage) -> None:
    for key in ("a/1", "a/2", "ab/3", "b/4"):
        storage.put(key, key.encode())
    assert list(storage.list("a/")) == ["a/1", "a/2"]
    assert list(storage.list()) == ["a/1", "a/2", "ab/3", "b/4"]
    assert storage.delete_prefix("a/") == 2
    assert list(storage.list()) == ["ab/3", "b/4"]
    assert storage.delete_prefix("nothing/") == 0


def test_list_is_sorted_across_pages(storage: Storage) -> None:
    # The S3 storage lists two keys a page, so seven keys take four requests.
    keys = ["k/" + name for name in ("z", "b", "é", "a0", "a", "B", "m")]
    for key in keys:
        storage.put(key, b"x")
    assert list(storage.list("k/")) == sorted(keys)


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "", "a\\b", "C:/x", "a/.."]
)
def test_refuses_bad_keys(storage: Storage, key: str) -> None:
    with pytest.raises(StorageKeyError):
        storage.put(key, b"x")
    with pytest.raises(StorageKeyError):
        storage.exists(key)
    assert list(storage.list()) == []


class _Exploding(io.RawIOBase):
    """A reader that fails half way, like a dropped upload."""

    def __init__(self, chunk: int = 1024) -> None:
        self.calls = 0
        self.chunk = chunk

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise ConnectionError("connection dropped")
        return b"x" * self.chunk


@pytest.mark.parametrize("chunk", [1024, 4 * MiB], ids=["small", "multipart-sized"])
def test_failed_write_leaves_nothing(storage: Storage, chunk: int) -> None:
    storage.put("model.bin", b"old complete file")
    with pytest.raises(ConnectionError):
        storage.put("model.bin", _Exploding(chunk))
    assert storage.read_bytes("model.bin") == b"old complete file"
    with pytest.raises(ConnectionError):
        storage.put("new.bin", _Exploding(chunk))
    assert not storage.exists("new.bin")
    assert leftovers(storage) == []


def test_large_file_round_trip(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(2 * BIG + 123)  # three parts on S3
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    with source.open("rb") as f:
        digest = storage.put("subjects/7/lora.safetensors", f)
    assert digest == hashlib.sha256(data).hexdigest()
    with storage.open("subjects/7/lora.safetensors") as f:
        assert f.read() == data
    if isinstance(storage, S3Storage):
        key = storage.prefix + "subjects/7/lora.safetensors"
        part = storage.client.head_object(Bucket=storage.bucket, Key=key, PartNumber=1)
        assert part["PartsCount"] == 3
        head = storage.client.head_object(Bucket=storage.bucket, Key=key, ChecksumMode="ENABLED")
        assert head["Metadata"]["sha256"] == digest  # what open() verifies against
        assert head["ChecksumSHA256"]  # S3 recorded (and checked) sha256 checksums for the parts
    assert leftovers(storage) == []


def test_readers_see_whole_versions_only(storage: Storage) -> None:
    versions = [bytes([n]) * (BIG + 1) for n in range(3)]  # multipart-sized on S3
    storage.put("shared.bin", versions[0])
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_all() -> None:
        try:
            while not stop.is_set():
                data = storage.read_bytes("shared.bin")
                assert data in versions, f"torn read of {len(data)} bytes"
                seen.add(data[:1])
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read_all)
    reader.start()
    for version in versions[1:] * 2:
        storage.put("shared.bin", version)
    stop.set()
    reader.join(60)
    assert errors == []
    assert seen  # the reader really read while the writer wrote


# -- S3 only ------------------------------------------------------------------------------


def test_s3_detects_a_damaged_object_on_read(s3_server: S3Server) -> None:
    storage = _s3_storage(s3_server, s3_server.new_bucket())
    digest = storage.put("subjects/1/lora.safetensors", b"the real weights")
    # Someone (a bad sync tool, bit rot behind a cache) overwrites the bytes but not the
    # recorded digest.
    storage.client.put_object(
        Bucket=storage.bucket,
        Key=storage.prefix + "subjects/1/lora.safetensors",
        Body=b"the wrong weights",
        Metadata={"sha256": digest},
    )
    with pytest.raises(ChecksumMismatch, match="damaged"):
        storage.read_bytes("subjects/1/lora.safetensors")


def test_s3_prefixes_are_separate_deployments(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    a, b = _s3_storage(s3_server, bucket, "deploy-a"), _s3_storage(s3_server, bucket, "deploy-ab")
    a.put("x/1", b"a")
    b.put("x/1", b"b")
    assert list(a.list()) == ["x/1"]
    assert a.read_bytes("x/1") == b"a"
    assert a.delete_prefix("") == 1
    assert b.read_bytes("x/1") == b"b"


def test_storage_from_settings_picks_the_backend(s3_server: S3Server, tmp_path: Path) -> None:
    local = storage_from_settings(make_test_settings(tmp_path / "var"))
    assert isinstance(local, LocalStorage)
    assert local.root == (tmp_path / "var" / "storage").resolve()
    bucket = s3_server.new_bucket()
    settings = make_test_settings(tmp_path / "var", **s3_server.settings_overrides(bucket, "/p/q/"))
    s3 = storage_from_settings(settings)
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix) == (bucket, "p/q/")
    s3.put("k", b"v")
    assert [o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket)["Contents"]] == ["p/q/k"]


def test_s3_missing_bucket_is_not_silently_empty(s3_server: S3Server) -> None:
    storage = _s3_storage(s3_server, "no-such-bucket-here")
    with pytest.raises(DreambotError, match="bucket 'no-such-bucket-here' does not exist"):
        storage.put("k", b"v")
    with pytest.raises(DreambotError, match="does not exist"):
        storage.open("k")  # not NotFound: a missing bucket is not a missing key
    with pytest.raises(DreambotError, match="does not exist"):
        list(storage.list())


# -- local folder only ---------------------------------------------------------------------


def test_local_refuses_the_tmp_folder_as_a_key(local: LocalStorage) -> None:
    with pytest.raises(StorageKeyError):
        local.put(".tmp/x", b"x")


def test_refuses_symlink_escape(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, local.root / "link")
    with pytest.raises(StorageKeyError):
        local.put("link/x", b"x")
    assert not (outside / "x").exists()


def _write_then_die(root: str) -> None:
    class DieMidway(io.RawIOBase):
        sent = 0

        def read(self, n: int = -1) -> bytes:
            if self.sent:
                os._exit(9)  # the process dies mid-write: no cleanup runs at all
            self.sent += 1
            return b"partial"

    LocalStorage(root).put("crash.bin", DieMidway())


def test_crash_mid_write_never_publishes_half_a_file(local: LocalStorage) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(local.root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    assert not local.exists("crash.bin")
    assert list(local.list()) == []  # the leftover temp file is not a key
