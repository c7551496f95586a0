"""`dreambot doctor`: checks each part of a deployment and says, in plain words, how to fix it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from kombu import Connection
from sqlalchemy import select, text

from agent.chat_mode import chat_status, llm_configured
from core import jobs, migrate
from core.db import session_scope
from core.dbclock import db_now
from core.enums import JobKind, JobState
from core.errors import DreambotError
from core.job_results import SelftestResult
from core.models import Job, Worker
from core.queue import get_celery
from core.settings import Settings
from core.storage import storage_from_settings


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def check_database(settings: Settings) -> Check:
    try:
        with session_scope(settings) as session:
            session.execute(text("SELECT 1"))
        migrate.check_schema(settings)
    except DreambotError as exc:
        return Check("database", False, str(exc))
    except Exception as exc:
        return Check(
            "database",
            False,
            f"cannot connect to DREAMBOT_DATABASE_URL ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); is the server running and the URL right?",
        )
    return Check("database", True, f"{settings.resolved_database_url.split('@')[-1]} at the current schema")


def check_broker(settings: Settings) -> Check:
    url = settings.resolved_broker_url
    try:
        app = get_celery(settings)
        with Connection(url, transport_options=app.conf.broker_transport_options) as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        return Check(
            "broker",
            False,
            f"cannot reach DREAMBOT_BROKER_URL={url.split('@')[-1]} ({exc}); "
            "start Redis/RabbitMQ or fix the URL",
        )
    return Check("broker", True, url.split("@")[-1])


def check_storage(settings: Settings) -> Check:
    key = f"doctor/{uuid.uuid4().hex}"
    try:
        storage = storage_from_settings(settings)
        storage.put(key, b"ok")
        ok = storage.read_bytes(key) == b"ok"
        storage.delete(key)
    except Exception as exc:
        return Check("storage", False, f"cannot write to DREAMBOT_STORAGE_URL ({exc})")
    return Check("storage", ok, settings.resolved_storage_url)


def check_llm(settings: Settings) -> Check:
    if not llm_configured(settings):
        return Check("llm", False, f"chat: {chat_status(settings)}", required=False)
    headers = {}
    if settings.llm_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
    url = settings.llm_base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=5)
    except httpx.HTTPError as exc:
        return Check(
            "llm",
            False,
            f"cannot reach DREAMBOT_LLM_BASE_URL={settings.llm_base_url} ({exc})",
            required=False,
        )
    if response.status_code in (401, 403):
        return Check(
            "llm", False, "the LLM endpoint refused the key: set DREAMBOT_LLM_API_KEY", required=False
        )
    return Check(
        "llm",
        response.is_success,
        f"{settings.llm_base_url} answered {response.status_code}"
        + ("" if response.is_success else "; chat falls back to basic mode while it fails"),
        required=False,
    )


def check_base_model(settings: Settings) -> Check:
    """Whether the base model is on this host (and its size), or what the first training
    will have to download. A warning, not a failure: chat works without it."""
    try:
        from gpu_worker.model_status import describe_base_model
    except ImportError as exc:  # a chat-only host without huggingface_hub
        return Check("model", False, f"cannot check the base model here ({exc})", required=False)
    state = describe_base_model(settings)
    return Check("model", state.ok, state.text, required=False)


def check_hub(settings: Settings) -> Check:
    try:
        from gpu_worker.model_status import hub_reachable
    except ImportError as exc:
        return Check("hub", False, f"cannot check the model hub here ({exc})", required=False)
    ok, detail = hub_reachable(settings)
    return Check("hub", ok, detail, required=False)


def warm_state(state: str, warmup: dict[str, Any]) -> str:
    """`ready on cuda:0 (warm-up 12.3 s)`, `warming: compiling …`, `starting`."""
    if state == "warming":
        return f"warming: {warmup.get('doing') or '…'}"
    if state != "ready" or not warmup:
        return state
    seconds = f" (warm-up {warmup['seconds']} s)" if warmup.get("seconds") is not None else ""
    return f"ready on {warmup.get('device', '?')}{seconds}"


def check_workers(settings: Settings) -> Check:
    recent = db_now(-3 * settings.heartbeat_interval - 5)
    try:
        with session_scope(settings) as session:
            rows = (
                session.execute(
                    select(Worker.name, Worker.queues, Worker.state, Worker.warmup).where(
                        Worker.last_seen_at >= recent
                    )
                )
                .tuples()
                .all()
            )
    except Exception as exc:
        return Check("workers", False, f"cannot read workers ({exc})")
    if not rows:
        return Check(
            "workers", False, "no worker is running: start one with `dreambot worker` or `dreambot up`"
        )
    queues = {q for _, qs, _, _ in rows for q in qs.split(",")}
    missing = [q for q in (settings.queue_name("train"), settings.queue_name("sample")) if q not in queues]
    detail = ", ".join(f"{n} ({q}; {warm_state(state, warmup or {})})" for n, q, state, warmup in rows)
    if missing:
        return Check("workers", False, f"{detail}; nobody serves {', '.join(missing)}")
    return Check("workers", True, detail)


def check_selftest(settings: Settings, timeout: float) -> Check:
    """Send a selftest job through the queue and report what the worker sees."""
    job = jobs.submit(settings, kind=JobKind.SELFTEST, max_attempts=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            row = session.get(Job, job.id)
            if row is not None and row.status in jobs.TERMINAL:
                break
        time.sleep(0.5)
    else:
        jobs.request_cancel(settings, job.id)
        return Check("gpu", False, f"no worker ran the selftest within {timeout:.0f}s")
    if row.status != JobState.SUCCEEDED or row.result is None:
        return Check("gpu", False, f"selftest {row.status}: {row.error}")
    seen = SelftestResult.read(row.result)
    if not seen.cuda_devices:
        torch = seen.torch or "not installed (pip install 'dreambot[worker]')"
        return Check(
            "gpu",
            False,
            f"worker {seen.worker}: no CUDA GPU (torch {torch}); training and sampling will be slow on CPU",
            required=False,
        )
    names = ", ".join(f"{g.name} {g.free_gb}/{g.total_gb} GB free" for g in seen.cuda_devices)
    return Check("gpu", True, f"worker {seen.worker}: {names}")


def run_checks(settings: Settings, selftest_timeout: float = 30) -> list[Check]:
    checks: list[Callable[[], Check]] = [
        lambda: check_database(settings),
        lambda: check_broker(settings),
        lambda: check_storage(settings),
        lambda: check_llm(settings),
        lambda: check_workers(settings),
        lambda: check_base_model(settings),
        lambda: check_hub(settings),
    ]
    results = [c() for c in checks]
    db_ok, broker_ok, workers_ok = results[0].ok, results[1].ok, results[4].ok
    if db_ok and broker_ok and workers_ok:
        results.append(check_selftest(settings, selftest_timeout))
    return results
