"""Workers warm before their first claim, and say so: worker row, /metrics, doctor, playground."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.cli.doctor import check_workers
from bot.web.playground import timeline
from core import jobs, metrics, stats
from core.db import dispose_engines, session_scope
from core.models import Job, Worker
from core.settings import Settings
from gpu_worker import warmup
from tests.helpers.lora import sample_settings
from tests.helpers.workers import WorkerProcess, wait_for, wait_job


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Settings]:
    yield sample_settings(tmp_path / "var", tiny_model_dir)
    dispose_engines()


def worker_row(settings: Settings, name: str) -> Worker | None:
    with session_scope(settings) as session:
        row = session.get(Worker, name)
        if row is not None:
            session.expunge(row)
        return row


def test_warm_worker_records_warming_while_it_warms_then_ready(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []

    def sample_warmer(s: Settings, report: warmup.Report) -> dict[str, Any]:
        report("compiling batch 1")
        row = worker_row(s, "w@host")
        assert row is not None
        seen.append((row.state, row.warmup["doing"]))
        return {"warmed": ["batch 1"]}

    def broken_train_warmer(s: Settings, report: warmup.Report) -> dict[str, Any]:
        raise RuntimeError("no such model")

    monkeypatch.setitem(warmup.WARMERS, "sample", sample_warmer)
    monkeypatch.setitem(warmup.WARMERS, "train", broken_train_warmer)
    warmup.record_state(settings, "w@host", "ready", {"seconds": 1}, "q")  # the previous run's row
    warmup.record_state(settings, "w@host", "starting", {}, "q")
    restarted = worker_row(settings, "w@host")
    assert restarted is not None and restarted.state == "starting" and restarted.ready_at is None

    queues = [settings.queue_name("train"), settings.queue_name("sample")]
    details = warmup.warm_worker(settings, "w@host", queues, ",".join(queues))
    row = worker_row(settings, "w@host")
    assert seen == [("warming", "compiling batch 1")]
    assert row is not None and row.state == "ready"
    assert row.warming_at is not None and row.ready_at is not None and row.warming_at <= row.ready_at
    assert row.warmup == details and details["device"] == "cpu" and "doing" not in details
    assert details["queues"]["sample"]["warmed"] == ["batch 1"]
    assert details["queues"]["train"]["error"] == "RuntimeError: no such model"  # served anyway


def test_warm_states_show_in_metrics_doctor_and_the_playground(settings: Settings) -> None:
    sample_q = settings.queue_name("sample")
    warmup.record_state(settings, "a@host", "warming", {"doing": "compiling batch 4"}, sample_q)
    with session_scope(settings) as session:
        assert stats.picture_status(session, settings) == (
            "pictures: warming up (compiling batch 4); requests wait until it is ready"
        )
    assert "warming: compiling batch 4" in check_workers(settings).detail
    warmup.record_state(settings, "a@host", "ready", {"device": "cuda:0", "seconds": 7.5}, sample_q)
    text = metrics.render(metrics.make_registry(settings)).decode()
    assert 'dreambot_worker_state{state="ready",worker="a@host"} 1.0' in text
    assert 'dreambot_worker_state{state="warming",worker="a@host"} 0.0' in text
    assert 'dreambot_worker_warmup_seconds{worker="a@host"} 7.5' in text
    assert "a@host" in check_workers(settings).detail and "ready on cuda:0 (warm-up 7.5 s)" in (
        check_workers(settings).detail
    )
    with session_scope(settings) as session:
        assert stats.picture_status(session, settings) == "pictures: ready on cuda:0"
    assert timeline(settings, "visitor")["pictures"] == "pictures: ready on cuda:0"  # the status line's


@pytest.mark.slow
def test_a_worker_warms_every_queue_before_its_first_claim(settings: Settings, tmp_path: Path) -> None:
    """The job is queued before the worker exists, so only the warm-up stands between the
    worker's start and the claim: warming, then ready, then the claim, in that order."""
    job = jobs.submit(settings, kind="sample", params={"prompt": "a dog", "steps": 2, "seed": 1})
    worker = WorkerProcess(settings, "train,sample", tmp_path)
    try:
        done = wait_job(settings, job.id)
        assert done.status == "succeeded", f"{done.error}\n{worker.log()}"
        row = wait_for(lambda: worker_row(settings, worker.name), what="the worker row")
    finally:
        worker.stop()
    with session_scope(settings) as session:
        claimed = session.get(Job, job.id)
        assert claimed is not None and claimed.claimed_at is not None
        claimed_at = claimed.claimed_at
    assert row.state == "ready", row.warmup
    assert row.warming_at is not None and row.ready_at is not None
    assert row.warming_at <= row.ready_at <= claimed_at
    assert row.warmup["device"] == "cpu"
    assert row.warmup["queues"]["sample"]["warmed"] == ["base model"]
    assert row.warmup["queues"]["train"]["warmed"] == ["base model"]
    log = worker.log_path.read_text(errors="replace")
    assert log.index(f"worker {worker.name} ready on cpu") < log.index(f"job {job.id}: sample started")
