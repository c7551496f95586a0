"""The LoRA disk cache shared by several worker processes on one host, fed from S3.

Real processes (spawned, like the train and sample workers of one GPU host), a real file
lock, and the S3 storage over HTTP (moto's server).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import pytest

from core.storage import storage_from_settings
from core.storage_s3 import S3Storage
from gpu_worker.lora_cache import DamagedAdapter, LoraDiskCache
from tests.helpers.profile import make_test_settings
from tests.helpers.s3 import S3Server

SIZE = 256 * 1024
N_FILES = 5


def _cache(overrides: dict[str, Any], root: str, max_bytes: int) -> LoraDiskCache:
    settings = make_test_settings(Path(root) / "unused", **overrides)
    return LoraDiskCache(Path(root), storage_from_settings(settings), max_bytes)


def _fill(
    overrides: dict[str, Any], root: str, max_bytes: int, shas: list[str], seed: int, start: Any
) -> None:
    """A worker process: many gets in its own order; every path must hold the right bytes."""
    cache = _cache(overrides, root, max_bytes)
    order = random.Random(seed)
    start.wait(60)  # both processes begin together
    for _ in range(30):
        n = order.randrange(len(shas))
        path = cache.get(f"subjects/{n}/lora.safetensors", shas[n])
        data = path.read_bytes()  # what the adapter loader does next
        if hashlib.sha256(data).hexdigest() != shas[n]:
            os._exit(3)
    os._exit(0)


@pytest.fixture
def overrides(s3_server: S3Server) -> dict[str, Any]:
    return s3_server.settings_overrides(s3_server.new_bucket())


@pytest.fixture
def shas(overrides: dict[str, Any], tmp_path: Path) -> list[str]:
    storage = storage_from_settings(make_test_settings(tmp_path / "var", **overrides))
    return [storage.put(f"subjects/{n}/lora.safetensors", os.urandom(SIZE)) for n in range(N_FILES)]


def test_two_processes_fill_one_cache_at_once(
    overrides: dict[str, Any], shas: list[str], tmp_path: Path
) -> None:
    root, max_bytes = tmp_path / "lora-cache", int(SIZE * 2.5)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_fill, args=(overrides, str(root), max_bytes, shas, seed, start))
        for seed in (1, 2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]  # 3 would be a path with the wrong bytes
    files = sorted(p.name for p in root.iterdir())
    assert ".lock" in files
    held = [root / f for f in files if f.endswith(".safetensors")]
    assert [f for f in files if f != ".lock" and not f.endswith(".safetensors")] == []  # no .part left
    assert held and sum(p.stat().st_size for p in held) <= max_bytes  # the bound holds
    for path in held:  # every cached file is exactly what its name says
        assert hashlib.sha256(path.read_bytes()).hexdigest() + ".safetensors" == path.name


def _fetch_while_locked(overrides: dict[str, Any], root: str, sha: str, log: str, ready: Any) -> None:
    cache = _cache(overrides, root, 10 * SIZE)
    ready.set()
    cache.get("subjects/0/lora.safetensors", sha)
    with open(log, "a") as f:
        f.write("fetched\n")


def test_a_fetch_waits_for_the_other_process(
    overrides: dict[str, Any], shas: list[str], tmp_path: Path
) -> None:
    root, log = tmp_path / "lora-cache", tmp_path / "order.log"
    holder = LoraDiskCache(
        root, storage_from_settings(make_test_settings(tmp_path / "var", **overrides)), SIZE
    )
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    with holder._lock:  # as if this process were half way through a download
        proc = ctx.Process(target=_fetch_while_locked, args=(overrides, str(root), shas[0], str(log), ready))
        proc.start()
        assert ready.wait(60)
        proc.join(1.0)  # a chance to run ahead; it must not get past the lock
        log.write_text("released\n")
    proc.join(60)
    assert proc.exitcode == 0
    assert log.read_text().splitlines() == ["released", "fetched"]


def test_leftovers_of_a_killed_fetch_are_removed(
    overrides: dict[str, Any], shas: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "lora-cache"
    cache = _cache(overrides, str(root), 10 * SIZE)
    (root / ".deadbeef.part").write_bytes(b"half a download")  # its process was killed
    cache.get("subjects/1/lora.safetensors", shas[1])
    assert sorted(p.name for p in root.iterdir()) == sorted([".lock", f"{shas[1]}.safetensors"])


def test_a_damaged_stored_object_is_refused_with_the_friendly_message(
    overrides: dict[str, Any], shas: list[str], tmp_path: Path
) -> None:
    storage = storage_from_settings(make_test_settings(tmp_path / "var", **overrides))
    assert isinstance(storage, S3Storage)
    # The bytes rot behind the store's back; the digest recorded at upload stays.
    storage.client.put_object(
        Bucket=storage.bucket,
        Key=storage.prefix + "subjects/2/lora.safetensors",
        Body=b"bit rot",
        Metadata={"sha256": shas[2]},
    )
    cache = LoraDiskCache(tmp_path / "lora-cache", storage, 10 * SIZE)
    with pytest.raises(DamagedAdapter, match="“rex” is damaged"):
        cache.get("subjects/2/lora.safetensors", shas[2], "“rex”")
    assert cache.cached() == []
