"""The test settings profile: short timings, a private data folder and queue names.

Every test gets its own `Settings` (never the process-wide one) so tests can run in
parallel (`pytest -n 2`): queues are prefixed per test run, PostgreSQL tests get their
own schema and Redis tests their own database number per xdist worker.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings

PG_URL = os.environ.get("DREAMBOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_URL = os.environ.get("DREAMBOT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

FAST = dict(
    heartbeat_interval=0.3,
    lease_timeout=2.5,
    resend_after=3.0,
    sweep_interval=0.3,
    broker_poll_interval=0.05,
    train_time_limit=600,
    sample_time_limit=300,
)


def xdist_index() -> int:
    """0 for the main process or gw0, 1 for gw1, …"""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


def redis_url() -> str:
    # Databases 1..15, one per xdist worker, so FLUSHDB in one never touches another.
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{1 + xdist_index() % 15}"


def make_test_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for one test: everything under `data_dir`, short timings, unique queues."""
    values: dict[str, Any] = dict(FAST)
    values.update(data_dir=data_dir, queue_prefix=f"t{uuid.uuid4().hex[:8]}-")
    values.update(overrides)
    return load_settings(_env_file=None, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as DREAMBOT_* variables, for a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMBOT_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"DREAMBOT_{name.upper()}"] = str(value)
    return env


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
