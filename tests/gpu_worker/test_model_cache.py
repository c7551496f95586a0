"""Base models kept in storage (`storage:models/…`): published once, copied once per host.

Real storage (a local folder, and moto's S3 server over HTTP), real processes sharing one
cache folder through the file lock, and the tiny model loaded with `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from core import migrate
from core.db import dispose_engines
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from core.storage_s3 import S3Storage
from gpu_worker import pipelines
from gpu_worker.model_cache import (
    MANIFEST,
    BaseModelUnavailable,
    DamagedBaseModel,
    ModelCache,
    model_cache,
    publish_base_model,
    resolve_base_model,
)
from tests.helpers.profile import make_test_settings, settings_env
from tests.helpers.s3 import S3Server

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose storage is a local folder, or a bucket of its own on the S3 server."""
    overrides: dict[str, Any] = {}
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        overrides = s3.settings_overrides(s3.new_bucket())
    return make_test_settings(tmp_path / "var", **overrides)


def cache_entries(settings: Settings) -> list[str]:
    root = Path(settings.data_dir) / "model-cache"
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


def test_a_published_model_resolves_to_a_loadable_local_copy(
    settings: Settings, tiny_model_dir: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    manifest = publish_base_model(settings, tiny_model_dir, "models/tiny")
    stored = json.loads(storage_from_settings(settings).read_bytes(f"models/tiny/{MANIFEST}"))
    unet = tiny_model_dir / UNET
    assert stored["files"][UNET] == {
        "sha256": hashlib.sha256(unet.read_bytes()).hexdigest(),
        "size": unet.stat().st_size,
    }
    assert "model_index.json" in stored["files"] and len(stored["files"]) == len(manifest.files)

    first = model_cache(settings).resolve("models/tiny")
    again = model_cache(settings).resolve("models/tiny")
    assert (first.downloaded, again.downloaded) == (True, False)  # copied once, then reused
    assert first.path == again.path
    assert first.path.parent == Path(settings.data_dir) / "model-cache"
    assert resolve_base_model(settings, "storage:models/tiny") == str(first.path)
    pipe = StableDiffusionPipeline.from_pretrained(str(first.path), safety_checker=None)
    assert pipe.unet.config.sample_size == 32
    assert cache_entries(settings) == [first.path.name]  # no .part or .trash left


def test_hub_ids_and_local_folders_are_left_to_from_pretrained(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_test_settings(tmp_path / "var")
    for name in ("stable-diffusion-v1-5/stable-diffusion-v1-5", str(tiny_model_dir)):
        assert resolve_base_model(settings, name) == name
    assert not (tmp_path / "var" / "model-cache").exists()  # nothing cached for them


def test_an_unpublished_model_is_refused_with_what_to_do(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "var")
    with pytest.raises(BaseModelUnavailable, match="dreambot model publish MODEL_FOLDER --as models/sd15"):
        resolve_base_model(settings, "storage:models/sd15")
    with pytest.raises(BaseModelUnavailable, match="not a usable storage name"):
        resolve_base_model(settings, "storage:../etc")


def test_a_damaged_stored_file_is_refused_and_leaves_no_half_folder(
    settings: Settings, tiny_model_dir: Path
) -> None:
    publish_base_model(settings, tiny_model_dir, "models/tiny")
    storage = storage_from_settings(settings)
    good = storage.read_bytes(f"models/tiny/{UNET}")
    storage.put(f"models/tiny/{UNET}", good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped
    with pytest.raises(DamagedBaseModel, match=f"{UNET} does not match its manifest"):
        resolve_base_model(settings, "storage:models/tiny")
    assert cache_entries(settings) == []

    storage.delete(f"models/tiny/{UNET}")
    with pytest.raises(DamagedBaseModel, match=f"incomplete in storage: {UNET} is missing"):
        resolve_base_model(settings, "storage:models/tiny")
    assert cache_entries(settings) == []

    publish_base_model(settings, tiny_model_dir, "models/tiny")  # the operator publishes it again
    path = Path(resolve_base_model(settings, "storage:models/tiny"))
    assert (path / UNET).read_bytes() == good


def test_bytes_rotting_behind_s3s_back_are_refused(
    s3_server: S3Server, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = make_test_settings(tmp_path / "var", **s3_server.settings_overrides(s3_server.new_bucket()))
    publish_base_model(settings, tiny_model_dir, "models/tiny")
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    head = storage.client.head_object(Bucket=storage.bucket, Key=storage.prefix + f"models/tiny/{UNET}")
    storage.client.put_object(  # the digest recorded at upload stays; the bytes do not
        Bucket=storage.bucket,
        Key=storage.prefix + f"models/tiny/{UNET}",
        Body=b"rot",
        Metadata=head["Metadata"],
    )
    with pytest.raises(DamagedBaseModel, match="is damaged in storage"):
        resolve_base_model(settings, "storage:models/tiny")
    assert cache_entries(settings) == []


def test_republishing_gives_a_new_copy_and_drops_stale_keys(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "var")
    model = fake_model(tmp_path / "m", 100, extra="old.bin")
    publish_base_model(settings, model, "models/m")
    old = Path(resolve_base_model(settings, "storage:models/m"))
    (model / "old.bin").unlink()
    (model / "weights.bin").write_bytes(b"new" * 50)
    publish_base_model(settings, model, "models/m")
    assert "models/m/old.bin" not in list(storage_from_settings(settings).list("models/m/"))
    new = Path(resolve_base_model(settings, "storage:models/m"))
    assert new != old and (new / "weights.bin").read_bytes() == b"new" * 50
    assert not (new / "old.bin").exists()
    assert old.is_dir()  # a process may still be reading the old copy; the LRU removes it later


def fake_model(folder: Path, size: int, extra: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "weights.bin").write_bytes(os.urandom(size))
    if extra:
        (folder / extra).write_bytes(b"x")
    return folder


def test_the_least_recently_used_model_is_evicted_beyond_the_bound(tmp_path: Path) -> None:
    size = 1000
    settings = make_test_settings(tmp_path / "var", model_cache_bytes=int(2.5 * size))
    for name in "abc":
        publish_base_model(settings, fake_model(tmp_path / name, size), f"models/{name}")

    def held() -> list[str]:
        return sorted(p.name.split("-")[0] for p in model_cache(settings).models())

    def use(name: str) -> None:
        resolve_base_model(settings, f"storage:models/{name}")

    use("a")
    use("b")
    assert held() == ["models_a", "models_b"]
    use("a")  # a is now more recent than b
    use("c")  # three do not fit: b, the least recently used, goes
    assert held() == ["models_a", "models_c"]
    use("b")
    assert held() == ["models_b", "models_c"]
    assert not list((tmp_path / "var" / "model-cache").glob(".*.trash"))

    # A bound smaller than one model: the requested model and the most recently used
    # other one are kept anyway (a process may be loading it); older ones still go.
    tight = make_test_settings(tmp_path / "var", model_cache_bytes=10)
    resolve_base_model(tight, "storage:models/a")
    assert held() == ["models_a", "models_b"]


class CountingStorage(Storage):
    """Another process's storage, writing one line per object read to `log`."""

    def __init__(self, inner: Storage, log: str) -> None:
        self.inner, self.log = inner, log

    def open(self, key: str) -> BinaryIO:
        with open(self.log, "a") as f:  # O_APPEND: whole lines from both processes
            f.write(f"{os.getpid()} {key}\n")
        return self.inner.open(key)

    def put(self, key: str, data: bytes | BinaryIO) -> str:
        return self.inner.put(key, data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)


def _resolve_in_process(env: dict[str, str], log: str, out: str, start: Any) -> None:
    os.environ.update(env)
    from core.settings import load_settings

    settings = load_settings(_env_file=None)
    cache = model_cache(settings)
    cache = ModelCache(cache.root, CountingStorage(cache.storage, log), cache.max_bytes)
    start.wait(60)  # both processes ask at once
    resolved = cache.resolve("models/tiny")
    Path(out).write_text(json.dumps({"path": str(resolved.path), "downloaded": resolved.downloaded}))
    os._exit(0)


def test_two_processes_on_one_host_download_once(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    manifest = publish_base_model(settings, tiny_model_dir, "models/tiny")
    env, log = settings_env(settings), tmp_path / "gets.log"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    outs = [tmp_path / f"out{n}.json" for n in range(2)]
    procs = [ctx.Process(target=_resolve_in_process, args=(env, str(log), str(o), start)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads(o.read_text()) for o in outs]
    assert sorted(r["downloaded"] for r in results) == [False, True]  # one copied, one waited and reused
    assert results[0]["path"] == results[1]["path"]
    gets = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    model_gets = sorted(k for k in gets if not k.endswith(MANIFEST))
    assert model_gets == sorted(f"models/tiny/{rel}" for rel in manifest.files)  # each file fetched once
    folder = Path(results[0]["path"])
    for rel, entry in manifest.files.items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == entry.sha256
    assert cache_entries(settings) == [folder.name]


def test_leftovers_of_a_killed_download_are_removed(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path / "var")
    publish_base_model(settings, fake_model(tmp_path / "m", 100), "models/m")
    cache = model_cache(settings)
    folder = cache.folder_for("models/m")
    (cache.root / f".{folder.name}.dead.part").mkdir()  # its process was killed mid-download
    (folder / "weights.bin").parent.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"cut short")  # a copy damaged behind our back
    assert cache.resolve("models/m").downloaded
    assert cache_entries(settings) == [folder.name]
    assert (folder / "weights.bin").stat().st_size == 100


# -- where the base model is loaded ---------------------------------------------------------


@pytest.fixture
def storage_model_settings(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    """A migrated deployment drawing with `storage:models/tiny` (published to its storage)."""
    settings = make_test_settings(tmp_path / "var", base_model="storage:models/tiny")
    migrate.upgrade(settings)
    publish_base_model(settings, tiny_model_dir, "models/tiny")
    pipelines.drop_residents()
    yield settings
    pipelines.drop_residents()
    dispose_engines()


def test_a_sampling_job_draws_with_a_storage_model(
    storage_model_settings: Settings, tiny_model_dir: Path
) -> None:
    from sqlalchemy import select

    from core.db import session_scope
    from core.image_codec import read_png_metadata
    from core.models import Subject
    from tests.helpers.lora import make_lora_bytes, make_subject, make_user, run_sample

    settings = storage_model_settings
    owner = make_user(settings)
    rex = make_subject(settings, owner, make_lora_bytes(tiny_model_dir, seed=1))
    job = run_sample(settings, {"prompt": "a photo of zwx dog", "n": 1, "seed": 3, "steps": 2}, owner, (rex,))
    assert job.status == "succeeded", job.error
    png = storage_from_settings(settings).read_bytes(job.result["images"][0]["key"])
    assert read_png_metadata(png)["base_model"] == "storage:models/tiny"
    with session_scope(settings) as s:  # the subject keeps the portable name, not this host's path
        assert s.scalar(select(Subject.base_model).where(Subject.id == rex)) == "storage:models/tiny"
    assert [p.name.split("-")[0] for p in model_cache(settings).models()] == ["models_tiny"]


def test_training_loads_components_and_class_images_from_a_storage_model(
    storage_model_settings: Settings,
) -> None:
    from gpu_worker.training.class_images import ensure_class_images
    from gpu_worker.training.models import load_components

    settings = storage_model_settings
    comps = load_components("storage:models/tiny", settings)
    assert comps.base_model == "storage:models/tiny"  # what the subject and the checkpoints record
    assert Path(comps.model_path).parent == Path(settings.data_dir) / "model-cache"
    result = ensure_class_images(
        storage_from_settings(settings),
        base_model="storage:models/tiny",
        prompt="a photo of dog",
        resolution=64,
        count=1,
        sample_steps=1,
        settings=settings,
    )
    assert result.generated == 1 and result.images[0].size == (64, 64)


def test_the_publish_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bot.cli.main import app

    settings = make_test_settings(tmp_path / "var")
    env = settings_env(settings)
    model = fake_model(tmp_path / "m", 100)
    done = CliRunner().invoke(app, ["model", "publish", str(model), "--as", "models/m"], env=env)
    assert done.exit_code == 0, done.output
    assert "published 2 files" in done.output and "DREAMBOT_BASE_MODEL=storage:models/m" in done.output
    assert (Path(resolve_base_model(settings, "storage:models/m")) / "weights.bin").stat().st_size == 100

    refused = CliRunner().invoke(app, ["model", "publish", str(tmp_path), "--as", "models/x"], env=env)
    assert refused.exit_code == 1
    assert "is not a diffusers model folder" in refused.output
    assert not storage_from_settings(settings).exists(f"models/x/{MANIFEST}")
