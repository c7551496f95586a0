"""`/metrics` in the Prometheus text format, read from the database at scrape time.

The jobs table is the source of truth, and workers run on other hosts, so nothing here
counts events in process memory: a custom collector asks the database on every scrape
(one transaction, the same `core.stats` functions as the dashboard), and every host that
serves `/metrics` reports the same numbers. Time spans are computed by the database's
clock, like everything else in the job lifecycle.

Families (all prefixed `dreambot_`):
  jobs{kind,state}                          jobs per kind and state now
  queue_depth{queue,state}                  queued / running jobs per Celery queue
  job_duration_seconds{kind,state}          histogram: claim to finish of finished jobs
  training_step_seconds{job_id,worker}      seconds per step of each running training
  training_step_seconds_recent              mean seconds per step, trainings of the last hour
  sampling_images_per_second_recent         images / second of sample jobs of the last hour
  images_total                              images stored
  worker_heartbeat_age_seconds{worker,...}  seconds since each worker's last heartbeat
  worker_online{worker}, workers_online     1 when heard from within three heartbeats
  worker_state{worker,state}                1 for the worker's warm-up state (starting/warming/ready)
  worker_warmup_seconds{worker}             how long the last warm-up took (ready workers)
  llm_calls_total / llm_errors_total / llm_tokens_total{type} / llm_cost_usd_total {model}
  llm_spend_today_usd, llm_daily_spend_cap_usd
  outbox{state}                             delivery rows per state (a backlog shows here)
  database_up                               0 when the database could not be read
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from core import stats
from core.db import session_scope
from core.dbclock import db_now
from core.enums import FINISHED_STATES as FINISHED
from core.enums import JobKind, JobState
from core.job_progress import JobProgress
from core.job_results import SampleResult, TrainingResult
from core.models import (
    JOB_KINDS,
    JOB_STATES,
    OUTBOX_STATES,
    WORKER_STATES,
    Image,
    Job,
    LLMUsage,
    OutboxItem,
    Worker,
)
from core.queue import SAMPLE, TRAIN
from core.quotas import llm_spend_today
from core.settings import Settings

log = logging.getLogger(__name__)

# Sampling takes seconds, training up to hours: one set of buckets covers both.
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
RECENT = 3600.0  # window, seconds, of the "recent" rate gauges
__all__ = ["CONTENT_TYPE_LATEST", "DreambotCollector", "make_registry", "render"]


def seconds_between(session: Session, later: Any, earlier: Any) -> ColumnElement[Any]:
    """`later - earlier` in seconds, computed by the database (either dialect)."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


class DreambotCollector(Collector):
    """Reads every metric from the database on each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> list[Any]:
        return []  # no probe at registration time: the database may not be up yet

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("dreambot_database_up", "1 when the database answered this scrape")
        try:
            with session_scope(self.settings) as session:
                families = list(self._families(session))
        except Exception as exc:  # a scrape must still answer, saying the database is down
            log.warning("metrics: could not read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Session) -> Iterator[Any]:
        yield jobs_family(session)
        yield queue_family(session, self.settings)
        yield duration_family(session)
        yield from training_families(session)
        yield sampling_family(session)
        images = GaugeMetricFamily("dreambot_images_total", "images stored (all time)")
        images.add_metric([], session.scalar(select(func.count()).select_from(Image)) or 0)
        yield images
        yield from worker_families(session, self.settings)
        yield from llm_families(session, self.settings)
        yield outbox_family(session)


def jobs_family(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily("dreambot_jobs", "jobs per kind and state", labels=["kind", "state"])
    counts = {(k, s): 0 for k in JOB_KINDS for s in JOB_STATES}
    for kind, state, n in session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    ):
        counts[(kind, state)] = int(n)
    for (kind, state), n in sorted(counts.items()):
        family.add_metric([kind, state], n)
    return family


def queue_family(session: Session, settings: Settings) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "dreambot_queue_depth", "jobs queued or running per queue", labels=["queue", "state"]
    )
    depth = {settings.queue_name(q): {"queued": 0, "running": 0} for q in (TRAIN, SAMPLE)}
    depth.update(stats.queue_depth(session))
    for queue, states in sorted(depth.items()):
        for state, n in sorted(states.items()):
            family.add_metric([queue, state], n)
    return family


def duration_family(session: Session) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "dreambot_job_duration_seconds",
        "seconds from a job's (last) claim to its finish, finished jobs",
        labels=["kind", "state"],
    )
    span = seconds_between(session, Job.finished_at, Job.started_at)
    columns = [func.sum(case((span <= b, 1), else_=0)) for b in DURATION_BUCKETS]
    rows = session.execute(
        select(Job.kind, Job.status, func.count(), func.coalesce(func.sum(span), 0.0), *columns)
        .where(Job.status.in_(FINISHED), Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .group_by(Job.kind, Job.status)
        .order_by(Job.kind, Job.status)
    ).tuples()
    for kind, state, count, total, *le in rows:
        buckets = [(floatToGoString(b), int(n or 0)) for b, n in zip(DURATION_BUCKETS, le, strict=True)]
        buckets.append(("+Inf", int(count)))
        family.add_metric([kind, state], buckets, sum_value=float(total))
    return family


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def training_families(session: Session) -> Iterator[GaugeMetricFamily]:
    """Step time from the trainer's own reports (progress while running, result after)."""
    running = GaugeMetricFamily(
        "dreambot_training_step_seconds",
        "seconds per training step of each running training (from its last progress report)",
        labels=["job_id", "worker"],
    )
    for job_id, worker, progress in session.execute(
        select(Job.id, Job.worker, Job.progress).where(
            Job.kind == JobKind.TRAIN, Job.status == JobState.RUNNING
        )
    ).tuples():
        rate = _positive(JobProgress.read(progress).steps_per_s)
        if rate:
            running.add_metric([str(job_id), worker or ""], 1.0 / rate)
    yield running
    recent = GaugeMetricFamily(
        "dreambot_training_step_seconds_recent",
        f"mean seconds per step over trainings finished in the last {int(RECENT)} s",
    )
    steps = seconds = 0.0
    for (stored,) in session.execute(
        select(Job.result).where(
            Job.kind == JobKind.TRAIN, Job.status == JobState.SUCCEEDED, Job.finished_at >= db_now(-RECENT)
        )
    ).tuples():
        result = TrainingResult.read(stored)
        rate = _positive(result.steps_per_s)
        trained = _positive(result.steps - result.resumed_from)
        if rate and trained:
            steps += trained
            seconds += trained / rate
    if steps:
        recent.add_metric([], seconds / steps)
    yield recent


def sampling_family(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "dreambot_sampling_images_per_second_recent",
        f"images per second of sample jobs finished in the last {int(RECENT)} s (claim to finish)",
    )
    span = seconds_between(session, Job.finished_at, Job.started_at)
    images = seconds = 0.0
    for stored, took in session.execute(
        select(Job.result, span).where(
            Job.kind == JobKind.SAMPLE, Job.status == JobState.SUCCEEDED, Job.finished_at >= db_now(-RECENT)
        )
    ).tuples():
        result = SampleResult.read(stored)
        images += len(result.images) + result.blocked
        seconds += max(float(took or 0.0), 0.0)
    if images and seconds:
        family.add_metric([], images / seconds)
    return family


def worker_families(session: Session, settings: Settings) -> Iterator[GaugeMetricFamily]:
    age = GaugeMetricFamily(
        "dreambot_worker_heartbeat_age_seconds",
        "seconds since each worker's last heartbeat (database clock)",
        labels=["worker", "hostname", "queues"],
    )
    online = GaugeMetricFamily(
        "dreambot_worker_online",
        "1 when the worker was heard from within three heartbeats",
        labels=["worker"],
    )
    state = GaugeMetricFamily(
        "dreambot_worker_state",
        "1 for the worker's warm-up state: starting, warming, ready (takes jobs)",
        labels=["worker", "state"],
    )
    warmup = GaugeMetricFamily(
        "dreambot_worker_warmup_seconds", "seconds the worker's last warm-up took", labels=["worker"]
    )
    cutoff = stats.online_cutoff(settings)
    rows = session.execute(
        select(
            Worker.name,
            Worker.hostname,
            Worker.queues,
            seconds_between(session, db_now(), Worker.last_seen_at),
            Worker.last_seen_at >= cutoff,
            Worker.state,
            Worker.warmup,
        ).order_by(Worker.name)
    ).tuples()
    total = 0
    for name, hostname, queues, seconds, is_online, now_state, details in rows:
        age.add_metric([name, hostname, queues], max(float(seconds or 0.0), 0.0))
        online.add_metric([name], 1 if is_online else 0)
        total += 1 if is_online else 0
        for known in WORKER_STATES:
            state.add_metric([name, known], 1 if known == now_state else 0)
        if now_state == "ready" and isinstance((details or {}).get("seconds"), int | float):
            warmup.add_metric([name], float(details["seconds"]))
    yield age
    yield online
    yield state
    yield warmup
    count = GaugeMetricFamily("dreambot_workers_online", "workers heard from within three heartbeats")
    count.add_metric([], total)
    yield count


def llm_families(session: Session, settings: Settings) -> Iterator[Any]:
    calls = CounterMetricFamily("dreambot_llm_calls", "LLM calls", labels=["model"])
    errors = CounterMetricFamily("dreambot_llm_errors", "LLM calls that failed", labels=["model"])
    tokens = CounterMetricFamily("dreambot_llm_tokens", "LLM tokens", labels=["model", "type"])
    cost = CounterMetricFamily("dreambot_llm_cost_usd", "LLM spend in USD", labels=["model"])
    rows = session.execute(
        select(
            LLMUsage.model,
            func.count(),
            func.count(LLMUsage.error),
            func.coalesce(func.sum(LLMUsage.prompt_tokens), 0),
            func.coalesce(func.sum(LLMUsage.completion_tokens), 0),
            func.coalesce(func.sum(LLMUsage.cost_usd), 0.0),
        )
        .group_by(LLMUsage.model)
        .order_by(LLMUsage.model)
    )
    for model, n, failed, prompt, completion, usd in rows:
        calls.add_metric([model], int(n))
        errors.add_metric([model], int(failed))
        tokens.add_metric([model, "prompt"], int(prompt))
        tokens.add_metric([model, "completion"], int(completion))
        cost.add_metric([model], float(usd))
    yield from (calls, errors, tokens, cost)
    today = GaugeMetricFamily("dreambot_llm_spend_today_usd", "LLM spend over the last 24 hours (USD)")
    today.add_metric([], llm_spend_today(session))
    yield today
    cap = GaugeMetricFamily("dreambot_llm_daily_spend_cap_usd", "the configured daily LLM spend cap (USD)")
    cap.add_metric([], settings.llm_daily_spend_cap_usd)
    yield cap


def outbox_family(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily("dreambot_outbox", "delivery outbox rows per state", labels=["state"])
    counts = dict.fromkeys(OUTBOX_STATES, 0)
    for state, n in session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)):
        counts[state] = int(n)
    for state, n in counts.items():
        family.add_metric([state], n)
    return family


def make_registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DreambotCollector(settings))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format (`Content-Type: CONTENT_TYPE_LATEST`)."""
    return generate_latest(registry)
