"""The job lifecycle on SQLite and PostgreSQL: submit, claim, leases, cancel, sweep, quotas."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from core import jobs
from core.db import get_engine, session_scope
from core.dbclock import db_now
from core.errors import Blocked, IllegalTransition, LeaseLost, LLMBudgetExceeded, QuotaExceeded
from core.job_progress import JobProgress
from core.job_results import SelftestResult
from core.models import Image, Job, LLMUsage, User
from core.quotas import check_llm_budget
from core.settings import Settings
from core.sweeper import sweep
from tests.helpers.profile import make_test_settings


def queued_messages(settings: Settings, queue: str) -> int:
    """Messages waiting in the filesystem broker for `queue` (each is one file)."""
    folder = settings.broker_folder / "queue"
    return sum(1 for p in folder.glob(f"*.{queue}.msg")) if folder.exists() else 0


def make_user(settings: Settings, **quota: int | bool) -> int:
    with session_scope(settings) as s:
        user = User(platform="test", platform_user_id=f"u{id(quota)}", display_name="Ada", **quota)
        s.add(user)
        s.flush()
        return user.id


def age_heartbeat(settings: Settings, job_id: int, seconds: float = 3600) -> None:
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=db_now(-seconds)))


def test_submit_creates_row_then_sends_once_per_key(db_settings: Settings) -> None:
    queue = db_settings.queue_name("sample")
    job = jobs.submit(db_settings, kind="selftest", idempotency_key="slack:Ev1:0")
    again = jobs.submit(db_settings, kind="selftest", idempotency_key="slack:Ev1:0")
    assert again.id == job.id
    assert job.status == "queued" and job.queue == queue
    assert queued_messages(db_settings, queue) == 1
    other = jobs.submit(db_settings, kind="selftest", idempotency_key="slack:Ev1:1")
    assert other.id != job.id and queued_messages(db_settings, queue) == 2


def test_lifecycle_and_leases(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest")
    lease = jobs.claim(db_settings, job.id, "w1")
    assert lease is not None and lease.attempt == 1
    assert jobs.claim(db_settings, job.id, "w2") is None  # a duplicate message: quiet
    jobs.report_progress(db_settings, lease, JobProgress(step=1))
    image_id = jobs.add_image(
        db_settings, lease, storage_key="jobs/1/0.png", seed=7, prompt="p", width=64, height=64
    )
    assert image_id > 0
    jobs.finish(db_settings, lease, SelftestResult(worker="w1", attempt=1))
    done = jobs.get_job(db_settings, job.id)
    assert (done.status, done.result, done.progress) == (
        "succeeded",
        {"worker": "w1", "attempt": 1, "cuda_devices": []},
        {"step": 1},
    )
    assert done.started_at is not None and done.finished_at is not None
    with pytest.raises(LeaseLost):
        jobs.finish(db_settings, lease, SelftestResult(worker="again"))  # finished: no more writes


def test_a_swept_worker_can_no_longer_write(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest")
    old = jobs.claim(db_settings, job.id, "w1")
    assert old is not None
    age_heartbeat(db_settings, job.id)
    report = sweep(db_settings)
    assert report.requeued == [job.id] and job.id in report.resent
    new = jobs.claim(db_settings, job.id, "w2")
    assert new is not None and new.attempt == 2
    for write in (
        lambda: jobs.heartbeat(db_settings, old),
        lambda: jobs.finish(db_settings, old),
        lambda: jobs.report_progress(db_settings, old, JobProgress(step=1)),
    ):
        with pytest.raises(LeaseLost):
            write()
    with pytest.raises(LeaseLost):
        jobs.add_image(db_settings, old, storage_key="k", seed=1, prompt="p", width=8, height=8)
    jobs.finish(db_settings, new, SelftestResult(worker="w2"))
    final = jobs.get_job(db_settings, job.id)
    assert (final.status, final.attempt, final.worker) == ("succeeded", 2, "w2")
    with session_scope(db_settings) as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 0


def test_sweeper_fails_when_attempts_run_out(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest", max_attempts=1)
    assert jobs.claim(db_settings, job.id, "w1") is not None
    age_heartbeat(db_settings, job.id)
    assert sweep(db_settings).failed == [job.id]
    failed = jobs.get_job(db_settings, job.id)
    assert failed.status == "failed" and "stopped responding" in (failed.error or "")


def test_sweeper_resends_forgotten_jobs_and_leaves_fresh_ones(db_settings: Settings) -> None:
    queue = db_settings.queue_name("sample")
    job = jobs.submit(db_settings, kind="selftest")
    assert queued_messages(db_settings, queue) == 1
    assert sweep(db_settings).resent == []  # just sent: not yet
    with session_scope(db_settings) as s:
        s.execute(update(Job).where(Job.id == job.id).values(sent_at=db_now(-3600)))
    assert sweep(db_settings).resent == [job.id]
    assert queued_messages(db_settings, queue) == 2  # a duplicate doorbell is harmless
    assert jobs.claim(db_settings, job.id, "w1") is not None
    assert jobs.claim(db_settings, job.id, "w2") is None


def test_unreachable_broker_loses_nothing(tmp_path: Path, sqlite_settings: Settings) -> None:
    down = make_test_settings(
        sqlite_settings.data_dir,
        database_url=sqlite_settings.resolved_database_url,
        broker_url="redis://127.0.0.1:1/0",
        queue_prefix=sqlite_settings.queue_prefix,
    )
    job = jobs.submit(down, kind="selftest")
    assert jobs.get_job(down, job.id).sent_at is None  # row kept, doorbell not rung
    assert sweep(sqlite_settings).resent == [job.id]  # broker back: the sweeper sends it
    assert queued_messages(sqlite_settings, sqlite_settings.queue_name("sample")) == 1


def test_cancel(db_settings: Settings) -> None:
    queued = jobs.submit(db_settings, kind="selftest")
    assert jobs.request_cancel(db_settings, queued.id) == "cancelled"
    assert jobs.claim(db_settings, queued.id, "w1") is None
    running = jobs.submit(db_settings, kind="selftest")
    lease = jobs.claim(db_settings, running.id, "w1")
    assert lease is not None
    assert jobs.heartbeat(db_settings, lease) is False
    assert jobs.request_cancel(db_settings, running.id) == "running"
    assert jobs.heartbeat(db_settings, lease) is True  # the worker learns it should stop
    jobs.mark_cancelled(db_settings, lease)
    assert jobs.get_job(db_settings, running.id).status == "cancelled"
    assert jobs.request_cancel(db_settings, running.id) == "cancelled"


def test_transitions_are_checked() -> None:
    jobs.check_transition("queued", "running")
    jobs.check_transition("running", "queued")
    for old, new in [
        ("succeeded", "running"),
        ("failed", "queued"),
        ("queued", "succeeded"),
        ("cancelled", "running"),
        ("running", "running"),
    ]:
        with pytest.raises(IllegalTransition):
            jobs.check_transition(old, new)


def test_admin_transition_refuses_illegal_moves(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest")
    jobs.transition(db_settings, job.id, "failed", error="stopped by an admin")
    with pytest.raises(IllegalTransition):
        jobs.transition(db_settings, job.id, "queued")


def test_retryable_failure_requeues_until_attempts_run_out(db_settings: Settings) -> None:
    job = jobs.submit(db_settings, kind="selftest", max_attempts=2)
    first = jobs.claim(db_settings, job.id, "w1")
    assert first is not None
    assert jobs.fail(db_settings, first, "database blinked", retry=True) == "queued"
    second = jobs.claim(db_settings, job.id, "w1")
    assert second is not None and second.attempt == 2
    assert jobs.fail(db_settings, second, "database blinked", retry=True) == "failed"


def claim_race(settings: Settings, job_id: int, claimants: int = 8) -> list[int]:
    """`claimants` threads claim `job_id` at the same instant; returns who won."""
    barrier = threading.Barrier(claimants)
    wins: list[int] = []
    errors: list[BaseException] = []

    def claimant(n: int) -> None:
        try:
            barrier.wait()
            if jobs.claim(settings, job_id, f"w{n}") is not None:
                wins.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimant, args=(n,)) for n in range(claimants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return wins


def test_exactly_one_of_eight_claimants_wins(db_settings: Settings) -> None:
    for _ in range(25):
        job = jobs.submit(db_settings, kind="selftest")
        wins = claim_race(db_settings, job.id)
        assert len(wins) == 1
        assert jobs.get_job(db_settings, job.id).worker == f"w{wins[0]}"


def test_quotas(db_settings: Settings) -> None:
    user = make_user(db_settings, max_concurrent_jobs=2, trainings_per_day=1, images_per_day=6)
    jobs.submit(db_settings, kind="sample", owner_id=user, params={"n": 4})
    with pytest.raises(QuotaExceeded, match="2 left today"):
        jobs.submit(db_settings, kind="sample", owner_id=user, params={"n": 4})
    jobs.submit(db_settings, kind="train", owner_id=user)
    with pytest.raises(QuotaExceeded, match="running or queued"):
        jobs.submit(db_settings, kind="sample", owner_id=user, params={"n": 1})
    with session_scope(db_settings) as s:
        s.execute(update(Job).values(status="succeeded"))
    with pytest.raises(QuotaExceeded, match="trainings"):
        jobs.submit(db_settings, kind="train", owner_id=user)
    blocked = make_user(db_settings, is_blocked=True)
    with pytest.raises(Blocked):
        jobs.submit(db_settings, kind="sample", owner_id=blocked)


def test_llm_spend_cap(db_settings: Settings) -> None:
    with session_scope(db_settings) as s:
        check_llm_budget(s, db_settings)
        s.add(
            LLMUsage(
                model="gemma",
                prompt_tokens=10,
                completion_tokens=5,
                cost_usd=db_settings.llm_daily_spend_cap_usd,
            )
        )
    with session_scope(db_settings) as s, pytest.raises(LLMBudgetExceeded):
        check_llm_budget(s, db_settings)


def test_sweeper_passes_over_a_row_another_session_holds(pg_settings: Settings) -> None:
    """A row locked by another session (a heartbeat mid-commit; a cut host's session until
    PostgreSQL drops it) is left for the next pass; the rest are swept meanwhile."""
    held, free = (jobs.submit(pg_settings, kind="selftest") for _ in range(2))
    for job in (held, free):
        assert jobs.claim(pg_settings, job.id, "w1") is not None
        age_heartbeat(pg_settings, job.id)
    with session_scope(pg_settings) as holder:
        holder.execute(select(Job.id).where(Job.id == held.id).with_for_update())
        passes: list[object] = []
        sweeper = threading.Thread(target=lambda: passes.append(sweep(pg_settings)), daemon=True)
        sweeper.start()
        sweeper.join(60)  # bounds a hang only: without the skip it waits for `holder` forever
        assert len(passes) == 1, "the sweeper waited on the held row"
        holder.rollback()
    assert passes[0].requeued == [free.id]  # type: ignore[attr-defined]
    assert jobs.get_job(pg_settings, held.id).status == "running"
    assert sweep(pg_settings).requeued == [held.id]  # released: the next pass takes it


def test_postgres_drops_a_silent_host_within_the_lease(pg_settings: Settings) -> None:
    """Each connection asks the server to probe an idle client and give up on it within
    about lease_timeout (the multi-host test cuts a host mid-transaction for real)."""
    settings = pg_settings.model_copy(update={"lease_timeout": 120.0})
    with get_engine(settings).connect() as conn:
        shown = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
        user_timeout = conn.exec_driver_sql("SHOW tcp_user_timeout").scalar()
    # Seconds (milliseconds for the user timeout) as the server shows them over TCP.
    assert shown == {
        "tcp_keepalives_idle": "60",
        "tcp_keepalives_interval": "15",
        "tcp_keepalives_count": "4",
    }
    assert user_timeout == "120000"
