"""core.stats on both databases: the numbers the overview and /metrics show."""

from __future__ import annotations

from sqlalchemy import update

from core import stats
from core.db import session_scope
from core.dbclock import db_now
from core.models import Worker
from core.settings import Settings
from tests.bot.web.dashboard.seed import Seeded


def test_jobs_by_status_and_queue_depth(db_settings: Settings, seeded: Seeded) -> None:
    with session_scope(db_settings) as session:
        assert stats.jobs_by_status(session) == {
            "queued": 2,
            "running": 1,
            "succeeded": 2,
            "failed": 1,
            "cancelled": 1,
        }
        assert stats.queue_depth(session) == {
            db_settings.queue_name("sample"): {"queued": 1, "running": 1},
            db_settings.queue_name("train"): {"queued": 1, "running": 0},
        }


def test_workers_online_follows_heartbeats(db_settings: Settings, seeded: Seeded) -> None:
    with session_scope(db_settings) as session:
        [worker] = stats.workers(session, db_settings)
        assert worker.online and worker.running_jobs == 1 and worker.gpus == ["NVIDIA H100 (80.0 GB)"]
        assert stats.workers_online(session, db_settings) == 1
        session.execute(update(Worker).values(last_seen_at=db_now(-3600)))
    with session_scope(db_settings) as session:
        assert stats.workers_online(session, db_settings) == 0
        assert [w.online for w in stats.workers(session, db_settings)] == [False]
        assert stats.workers(session, db_settings, include_offline=False) == []


def test_throughput_and_failure_rate(db_settings: Settings, seeded: Seeded) -> None:
    with session_scope(db_settings) as session:
        rows = stats.throughput(session, days=1, bucket="day")
        hourly = stats.throughput(session, days=1, bucket="hour")
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["sample"] | {"bucket": ""} == {
        "bucket": "",
        "kind": "sample",
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "failure_rate": 0.5,
    }
    assert by_kind["train"]["succeeded"] == 1 and by_kind["train"]["failure_rate"] == 0.0
    assert len(rows[0]["bucket"]) == 10 and rows[0]["bucket"][4] == "-"  # YYYY-MM-DD
    assert hourly[0]["bucket"].endswith(":00") and sum(r["succeeded"] for r in hourly) == 2


def test_llm_usage_per_day(db_settings: Settings, seeded: Seeded) -> None:
    with session_scope(db_settings) as session:
        [day] = stats.llm_usage_per_day(session)
        overview = stats.overview(session, db_settings)
    assert (day["calls"], day["prompt_tokens"], day["completion_tokens"]) == (2, 150, 25)
    assert abs(day["cost_usd"] - 0.012) < 1e-9
    assert overview["llm_per_day"] == [day] and overview["workers_online"] == 1
