"""Statistics for the admin dashboard and `/metrics`: one place, plain dicts, database clock.

Every function takes an open `Session` so a page can read several numbers in one
transaction (one consistent snapshot on PostgreSQL). Time windows are measured with
`db_now`, never the web server's clock. Time buckets are strings (`YYYY-MM-DD` or
`YYYY-MM-DD HH:00`) so both dialects give the same shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from core.dbclock import db_now
from core.enums import FINISHED_STATES as FINISHED
from core.models import JOB_STATES, Job, LLMUsage, Worker
from core.settings import Settings

Bucket = Literal["day", "hour"]
DAY = 24 * 3600.0


def _bucket(session: Session, column: Any, bucket: Bucket) -> ColumnElement[str]:
    """`column` truncated to the day or hour, as text, on either dialect."""
    if session.get_bind().dialect.name == "sqlite":
        fmt = "%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H:00"
        return func.strftime(fmt, column)
    fmt = "YYYY-MM-DD" if bucket == "day" else "YYYY-MM-DD HH24:00"
    return func.to_char(func.date_trunc(bucket, column), fmt)


def jobs_by_status(session: Session) -> dict[str, int]:
    """Count of every job per state; states with no job are 0 (so charts keep their shape)."""
    counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = int(n)
    return counts


def queue_depth(session: Session) -> dict[str, dict[str, int]]:
    """Per queue name: jobs waiting (`queued`) and in progress (`running`)."""
    rows = session.execute(
        select(Job.queue, Job.status, func.count())
        .where(Job.status.in_(("queued", "running")))
        .group_by(Job.queue, Job.status)
    )
    depth: dict[str, dict[str, int]] = {}
    for queue, status, n in rows:
        depth.setdefault(queue, {"queued": 0, "running": 0})[status] = int(n)
    return dict(sorted(depth.items()))


@dataclass
class WorkerStatus:
    name: str
    hostname: str
    queues: list[str]
    last_seen_at: datetime
    started_at: datetime
    online: bool
    gpus: list[str] = field(default_factory=list)
    running_jobs: int = 0
    state: str = "ready"  # starting | warming | ready (gpu_worker.warmup)
    doing: str = ""  # while warming: what

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_seen_at"] = self.last_seen_at.isoformat(sep=" ", timespec="seconds")
        data["started_at"] = self.started_at.isoformat(sep=" ", timespec="seconds")
        return data


def _gpu_names(info: dict[str, Any]) -> list[str]:
    devices = info.get("cuda_devices") or []
    names = []
    for d in devices:
        if isinstance(d, dict):
            total = f" ({d['total_gb']} GB)" if d.get("total_gb") is not None else ""
            names.append(f"{d.get('name', 'GPU')}{total}")
    return names or (["CPU only"] if "cuda_devices" in info else [])


def _warmed_gpu(warmup: dict[str, Any]) -> list[str]:
    """The GPU a worker's warm-up found (a prefork worker's parent does not look itself)."""
    if not warmup.get("gpu"):
        return []
    total = f" ({warmup['gpu_memory_gb']} GB)" if warmup.get("gpu_memory_gb") is not None else ""
    return [f"{warmup['gpu']}{total}"]


def online_cutoff(settings: Settings) -> db_now:
    """A worker silent for three heartbeats (plus slack) is not online."""
    return db_now(-3 * settings.heartbeat_interval - 5)


def workers(session: Session, settings: Settings, *, include_offline: bool = True) -> list[WorkerStatus]:
    """Every worker that ever reported, newest heartbeat first, with its GPUs and load."""
    cutoff = online_cutoff(settings)
    stmt = select(Worker, (Worker.last_seen_at >= cutoff).label("online")).order_by(
        Worker.last_seen_at.desc()
    )
    running = dict(
        session.execute(
            select(Job.worker, func.count()).where(Job.status == "running").group_by(Job.worker)
        ).all()
    )
    result = []
    for worker, online in session.execute(stmt):
        if not online and not include_offline:
            continue
        result.append(
            WorkerStatus(
                name=worker.name,
                hostname=worker.hostname,
                queues=[q for q in worker.queues.split(",") if q],
                last_seen_at=worker.last_seen_at,
                started_at=worker.started_at,
                online=bool(online),
                gpus=_gpu_names(worker.info or {}) or _warmed_gpu(worker.warmup or {}),
                running_jobs=int(running.get(worker.name, 0)),
                state=worker.state,
                doing=str((worker.warmup or {}).get("doing", "")) if worker.state == "warming" else "",
            )
        )
    return result


def picture_status(session: Session, settings: Settings) -> str:
    """One line for the people using the playground: can pictures be drawn right now?"""
    sample_queue = settings.queue_name("sample")
    rows = [
        (state, warmup or {})
        for queues, state, warmup in session.execute(
            select(Worker.queues, Worker.state, Worker.warmup).where(
                Worker.last_seen_at >= online_cutoff(settings)
            )
        ).tuples()
        if sample_queue in queues.split(",")
    ]
    ready = [warmup for state, warmup in rows if state == "ready"]
    if ready:
        device = ready[0].get("device")
        return f"pictures: ready on {device}" if device else "pictures: ready"
    warming = [warmup for state, warmup in rows if state == "warming"]
    if warming:
        doing = warming[0].get("doing")
        return f"pictures: warming up{f' ({doing})' if doing else ''}; requests wait until it is ready"
    if rows:
        return "pictures: a worker is starting"
    return "pictures: no worker is running"


QUEUE_KINDS = ("train", "sample")


def queues_online(session: Session, settings: Settings) -> dict[str, list[str]]:
    """Each online worker's name → the kinds of queue it serves (train, sample)."""
    names = {settings.queue_name(kind): kind for kind in QUEUE_KINDS}
    rows = session.execute(
        select(Worker.name, Worker.queues).where(Worker.last_seen_at >= online_cutoff(settings))
    ).tuples()
    return {name: [names[q] for q in queues.split(",") if q in names] for name, queues in rows}


def workers_online(session: Session, settings: Settings) -> int:
    count = session.scalar(select(func.count()).where(Worker.last_seen_at >= online_cutoff(settings)))
    return int(count or 0)


def throughput(session: Session, *, days: float = 7, bucket: Bucket = "day") -> list[dict[str, Any]]:
    """Finished jobs per time bucket and kind: succeeded, failed, cancelled and failure rate.

    The failure rate is failed / (succeeded + failed); cancelled jobs are a person's
    choice, not a failure, so they do not count against it.
    """
    when = _bucket(session, Job.finished_at, bucket).label("bucket")
    rows = session.execute(
        select(when, Job.kind, Job.status, func.count())
        .where(Job.finished_at.is_not(None), Job.finished_at >= db_now(-days * DAY))
        .where(Job.status.in_(FINISHED))
        .group_by(when, Job.kind, Job.status)
        .order_by(when)
    )
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for when_value, kind, status, n in rows:
        entry = table.setdefault(
            (when_value, kind),
            {"bucket": when_value, "kind": kind, "succeeded": 0, "failed": 0, "cancelled": 0},
        )
        entry[status] = int(n)
    result = []
    for entry in table.values():
        decided = entry["succeeded"] + entry["failed"]
        entry["failure_rate"] = round(entry["failed"] / decided, 4) if decided else 0.0
        result.append(entry)
    return sorted(result, key=lambda e: (e["bucket"], e["kind"]))


def llm_usage_per_day(session: Session, *, days: float = 14) -> list[dict[str, Any]]:
    """LLM calls, prompt/completion tokens and cost (USD) per day."""
    day = _bucket(session, LLMUsage.created_at, "day").label("day")
    rows = session.execute(
        select(
            day,
            func.count(),
            func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
            func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
            func.coalesce(func.sum(LLMUsage.cost_usd), 0.0),
        )
        .where(LLMUsage.created_at >= db_now(-days * DAY))
        .group_by(day)
        .order_by(day)
    )
    return [
        {
            "day": d,
            "calls": int(calls),
            "prompt_tokens": int(prompt),
            "completion_tokens": int(completion),
            "cost_usd": round(float(cost), 6),
        }
        for d, calls, prompt, completion, cost in rows
    ]


def overview(session: Session, settings: Settings) -> dict[str, Any]:
    """Everything the overview page and its live refresh show, JSON-ready."""
    return {
        "jobs_by_status": jobs_by_status(session),
        "queue_depth": queue_depth(session),
        "workers_online": workers_online(session, settings),
        "workers": [w.as_dict() for w in workers(session, settings)],
        "throughput": throughput(session, days=7, bucket="day"),
        "throughput_hourly": throughput(session, days=2, bucket="hour"),
        "llm_per_day": llm_usage_per_day(session, days=14),
    }
