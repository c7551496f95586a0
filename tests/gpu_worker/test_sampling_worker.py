"""The whole task path once: submit -> filesystem broker -> a real `dreambot worker` -> stored images."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import jobs
from core.db import dispose_engines
from core.image_codec import read_png_metadata
from core.storage import storage_from_settings
from tests.helpers.lora import make_lora_bytes, make_subject, make_user, sample_settings
from tests.helpers.workers import WorkerProcess, wait_job

pytestmark = pytest.mark.slow


def test_sample_job_through_a_real_worker(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = sample_settings(tmp_path / "var", tiny_model_dir)
    owner = make_user(settings)
    rex = make_subject(settings, owner, make_lora_bytes(tiny_model_dir, seed=1))
    worker = WorkerProcess(settings, "sample", tmp_path)
    try:
        worker.wait_ready()
        params = {"prompt": "rex on the moon", "n": 2, "steps": 2, "seed": 11}
        first = jobs.submit(settings, kind="sample", params=params, owner_id=owner, subject_ids=[rex])
        second = jobs.submit(settings, kind="sample", params={**params, "seed": 12}, owner_id=owner)
        done, done2 = wait_job(settings, first.id), wait_job(settings, second.id)
        assert done.status == "succeeded", f"{done.error}\n{worker.log()}"
        assert done2.status == "succeeded", f"{done2.error}\n{worker.log()}"
        assert done.worker == worker.name and done.result["seeds"] == [11, 12]
        assert done.result["prompt"] == "a photo of zwx dog, rex on the moon"
        store = storage_from_settings(settings)
        meta = read_png_metadata(store.read_bytes(f"jobs/{first.id}/1.png"))
        assert meta["seed"] == "12" and meta["subjects"] == f"zwx dog (#{rex})"
        assert (tmp_path / "var" / "lora-cache").is_dir()  # the worker's verified copy
        # The pipeline was loaded once and kept: the log says so once for two jobs.
        assert worker.log().count(f"loading {settings.base_model} on") == 1, worker.log()
    finally:
        worker.stop()
        dispose_engines()
