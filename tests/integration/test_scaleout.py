"""Scale-out: two worker "hosts" share PostgreSQL, Redis and S3; one job id across the logs.

Each worker has its own data folder (its own LoRA cache, as on a separate machine); the
database, the broker and the bucket are the only things they share with the bot side
(this test process).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from bot.chat.delivery import Delivery
from core import jobs
from core.db import dispose_engines, session_scope
from core.logs import setup_logging
from core.models import Image, Job
from core.queue import make_celery
from core.settings import Settings
from core.storage import storage_from_settings
from core.storage_s3 import S3Storage
from tests.bot.chat.test_delivery import RecordingPoster, conversation, run_passes
from tests.helpers.lora import make_lora_bytes, make_subject, make_user
from tests.helpers.profile import PG_URL, make_test_settings, redis_url
from tests.helpers.s3 import S3Server
from tests.helpers.workers import WorkerProcess, wait_for, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture
def shared(
    pg_settings: Settings, redis_ready: None, s3_server: S3Server, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Settings]:
    """The bot host's settings: PostgreSQL (a schema of its own), Redis and an S3 bucket."""
    settings = make_test_settings(
        tmp_path / "bot",
        database_url=PG_URL,
        database_schema=pg_settings.database_schema,
        broker_url=redis_url(),
        queue_prefix=pg_settings.queue_prefix,
        base_model=str(tiny_model_dir),
        **s3_server.settings_overrides(s3_server.new_bucket()),
    )
    yield settings
    dispose_engines()
    client = redis.Redis.from_url(settings.resolved_broker_url)
    for key in client.scan_iter(f"*{settings.queue_prefix}*"):
        client.delete(key)


def on_host(settings: Settings, folder: Path) -> Settings:
    """The same deployment as seen from another machine: only the local folder differs."""
    return settings.model_copy(update={"data_dir": folder})


def test_two_workers_share_one_queue_and_every_job_runs_once(shared: Settings, tmp_path: Path) -> None:
    owner = make_user(shared)
    rex = make_subject(shared, owner, make_lora_bytes(Path(shared.base_model), seed=1))
    store = storage_from_settings(shared)
    assert isinstance(store, S3Storage) and store.exists(f"subjects/{rex}/lora.safetensors")
    hosts = [on_host(shared, tmp_path / f"gpu-{n}") for n in ("a", "b")]
    events = TaskEvents(shared)  # what Flower sees
    workers = [
        WorkerProcess(h, "sample", tmp_path, name=f"sample-gpu0-{n}")
        for h, n in zip(hosts, "ab", strict=True)
    ]
    try:
        for w in workers:
            try:
                w.wait_ready()
            except TimeoutError:
                raise AssertionError(w.log()) from None
        # Subscribed for sure once each worker's own events (online, heartbeats) arrive.
        wait_for(lambda: {w.name for w in workers} <= events.hostnames(), 60, what="worker events")
        submitted = [jobs.submit(shared, kind="selftest", params={"sleep": 0.5}) for _ in range(6)]
        params = {"prompt": "rex on the moon", "n": 1, "steps": 2}
        submitted += [
            jobs.submit(
                shared, kind="sample", params={**params, "seed": s}, owner_id=owner, subject_ids=[rex]
            )
            for s in (1, 2)
        ]
        done = [wait_job(shared, j.id, timeout=240) for j in submitted]
        logs = "\n".join(w.log() for w in workers)
        assert [d.status for d in done] == ["succeeded"] * len(done), [d.error for d in done] + [logs]
        assert all(d.attempt == 1 for d in done)  # claimed once, never requeued
        try:
            succeeded = wait_for(lambda: events.succeeded(len(done)), 30, what="Celery task events")
        except TimeoutError:
            raise AssertionError(events.received) from None
        assert sorted(succeeded) == sorted(d.id for d in done)  # task events are on: Flower works
        ran_on = {d.worker for d in done}
        assert ran_on == {w.name for w in workers}, ran_on  # both hosts took work from one queue
        with session_scope(shared) as s:
            per_job = dict(s.execute(select(Image.job_id, func.count()).group_by(Image.job_id)).all())
            keys = list(s.scalars(select(Image.storage_key)))
        assert per_job == {d.id: 1 for d in done if d.kind == "sample"}  # one image each, none twice
        for key in keys:  # written by a worker host, readable on the bot host
            assert store.read_bytes(key).startswith(b"\x89PNG")
        # Each host verified its own copy of the LoRA it used (its own disk cache).
        for host, w in zip(hosts, workers, strict=True):
            if any(d.worker == w.name and d.kind == "sample" for d in done):
                assert list((host.data_dir / "lora-cache").glob("*.safetensors")), w.log()
    finally:
        events.stop()
        for w in workers:
            w.stop()


class TaskEvents:
    """Celery's event stream, received the way Flower receives it."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self.received: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30)

    def _run(self) -> None:
        with self.app.connection() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.received.append})
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=True)

    def hostnames(self) -> set[str]:
        return {str(e.get("hostname")) for e in list(self.received)}

    def succeeded(self, n: int) -> list[int] | None:
        received = list(self.received)  # appended to by the receiver thread
        names = {e["uuid"]: e["args"] for e in received if e["type"] == "task-received"}
        done = [e["uuid"] for e in received if e["type"] == "task-succeeded"]
        job_ids = [int(names[u].strip("[]()").split(",")[0]) for u in done if u in names]
        return job_ids if len(job_ids) >= n else None

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.fixture
def bot_log() -> Iterator[io.StringIO]:
    stream, root = io.StringIO(), logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_one_job_id_from_bot_to_worker_to_delivery(
    sqlite_settings: Settings, tmp_path: Path, bot_log: io.StringIO
) -> None:
    settings = sqlite_settings.model_copy(update={"log_format": "json"})
    setup_logging(settings, bot_log)
    worker = WorkerProcess(settings, "sample", tmp_path)
    try:
        worker.wait_ready()
        conv = conversation(settings)
        job = jobs.submit(settings, kind="selftest", conversation_id=conv)
        assert wait_job(settings, job.id).status == "succeeded", worker.log()
        poster = RecordingPoster()
        asyncio.run(run_passes(Delivery(settings, {"test": poster}), 2))
        assert poster.log  # the job card went out
    finally:
        worker.stop()
    bot_side = [r for r in json_lines(bot_log.getvalue()) if r.get("job_id") == job.id]
    worker_side = [r for r in json_lines(worker.log_path.read_text()) if r.get("job_id") == job.id]
    assert any("sent to queue" in str(r["event"]) for r in bot_side), bot_log.getvalue()
    assert any("posted to test" in str(r["event"]) for r in bot_side), bot_log.getvalue()
    events = [str(r["event"]) for r in worker_side]
    started = next(i for i, e in enumerate(events) if "started on" in e)
    finished = next(i for i, e in enumerate(events) if e.endswith(": succeeded"))
    assert started < finished, events
    with session_scope(settings) as s:
        assert s.get(Job, job.id).worker == worker.name  # type: ignore[union-attr]
