"""The compile-artifact store: torch.compile's caches through storage, shared by processes.

Each process gets its own empty TORCHINDUCTOR_CACHE_DIR, so a cache hit can only have come
through the store; torch's own counters of FX-graph and AOTAutograd hits and misses are the
proof (a count, not a time).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage import LocalStorage, storage_from_settings
from gpu_worker.compile_store import MAGIC, CompileKey, CompileStore, encode_entry
from tests.helpers.compile_probe import KEY
from tests.helpers.profile import make_test_settings, settings_env
from tests.helpers.s3 import S3Server, moto_server

ROOT = Path(__file__).resolve().parents[2]


def probe(settings: Settings, cache_dir: Path, *functions: str) -> dict[str, int]:
    """Run `tests.helpers.compile_probe` in a fresh process: its JSON report."""
    env = settings_env(settings) | {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "tests.helpers.compile_probe", *functions]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_reuses_the_store_and_saves_merge(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "var")
    storage = storage_from_settings(settings)
    storage.put(KEY.storage_key(), b"garbage from a crashed writer")  # ignored, then replaced

    first = probe(settings, tmp_path / "cache1", "mlp")
    assert first["loaded"] == 0 and first["fx_miss"] == 1 and first["saved"] > 0
    # Another graph from another process: merged into the entry, the first one kept.
    second = probe(settings, tmp_path / "cache2", "conv")
    assert second["loaded"] == first["saved"] and second["fx_miss"] == 1 and second["saved"] > 0
    # A third process compiles both and compiles nothing: every graph comes from the store.
    third = probe(settings, tmp_path / "cache3", "mlp", "conv")
    assert third["fx_hit"] == 2 and third["fx_miss"] == 0
    assert third["aot_hit"] == 2 and third["aot_miss"] == 0
    assert third["saved"] == 0  # nothing new: the entry is not rewritten
    assert list(storage.list("compile-cache/")) == [KEY.storage_key()]


@pytest.mark.slow
def test_the_store_round_trips_through_s3(tmp_path: Path) -> None:
    with moto_server() as server:
        settings = _s3_settings(tmp_path, server)
        first = probe(settings, tmp_path / "cache1", "mlp")
        second = probe(settings, tmp_path / "cache2", "mlp")
        assert first["fx_miss"] == 1 and first["saved"] > 0
        assert second["loaded"] == first["saved"]
        assert second["fx_hit"] == 1 and second["fx_miss"] == 0 and second["aot_miss"] == 0


def _s3_settings(tmp_path: Path, server: S3Server) -> Settings:
    return make_test_settings(tmp_path / "var", **server.settings_overrides(server.new_bucket()))


@pytest.mark.parametrize(
    "content",
    [
        b"not an entry at all",
        MAGIC + b'{"key": {"purpose": "test"}, "bytes": 3}\nabc',  # another key's entry
        encode_entry(KEY, b"\x00" * 64, 1)[:-10],  # cut short
        encode_entry(KEY, b"\x00" * 64, 1),  # the right key, but bytes torch cannot read
    ],
    ids=["garbage", "foreign", "truncated", "unreadable"],
)
def test_a_bad_entry_is_ignored_with_one_log_line(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put(KEY.storage_key(), content)
    with caplog.at_level(logging.WARNING, logger="gpu_worker.compile_store"):
        assert CompileStore(storage).load(KEY) == 0
    lines = [r for r in caplog.records if r.name == "gpu_worker.compile_store"]
    assert len(lines) == 1 and "ignoring" in lines[0].getMessage()


def test_keys_route_by_every_field_callers_give() -> None:
    base = CompileKey(purpose="train", base_model="sd15", torch="2.11.0", device="cuda:NVIDIA H200")
    same = CompileKey(purpose="train", base_model="sd15", torch="2.11.0", device="cuda:NVIDIA H200")
    wider = base.model_copy(update={"resolution": 768})
    extra = CompileKey(purpose="train", base_model="sd15", torch="2.11.0", device="cuda:NVIDIA H200", rank=8)
    other_gpu = base.model_copy(update={"device": "cuda:NVIDIA A100"})
    assert base.storage_key() == same.storage_key()
    keys = {k.storage_key() for k in (base, wider, extra, other_gpu)}
    assert len(keys) == 4
    assert all(k.startswith("compile-cache/train/") for k in keys)
    with pytest.raises(ValueError):
        CompileKey(purpose="../x", base_model="sd15")
