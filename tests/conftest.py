"""Fixtures every suite uses. See tests/helpers/profile.py for the isolation rules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

from core import migrate
from core.db import dispose_engines
from core.settings import Settings
from tests.helpers.profile import PG_URL, REDIS_HOST, REDIS_PORT, make_test_settings, port_open

if TYPE_CHECKING:
    from tests.helpers.s3 import S3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(host: str, port: int, name: str) -> None:
    """Skip when a service is down on a laptop; fail in CI, where it must be up."""
    if not port_open(host, port):
        message = f"{name} is not reachable on {host}:{port}"
        if IN_CI:
            pytest.fail(message + " (CI=true: .ci/run should have started it)")
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SD pipeline folder, built once per test process."""
    from tests.helpers.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Iterator[Settings]:
    """A migrated SQLite database and a private data folder for one test."""
    settings = make_test_settings(tmp_path / "var")
    migrate.upgrade(settings)
    yield settings
    dispose_engines()


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """A migrated PostgreSQL schema of its own for one test, dropped afterwards."""
    require_service("127.0.0.1", 5432, "PostgreSQL")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = make_test_settings(tmp_path / "var", database_url=PG_URL, database_schema=schema)
    migrate.upgrade(settings)
    yield settings
    dispose_engines()
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest) -> Settings:
    """Both databases: the test runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_settings" if request.param == "sqlite" else "pg_settings"
    return request.getfixturevalue(name)


@pytest.fixture
def redis_ready() -> None:
    require_service(REDIS_HOST, REDIS_PORT, "Redis")


@pytest.fixture
def rabbitmq_ready() -> None:
    require_service("127.0.0.1", 5672, "RabbitMQ")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free 127.0.0.1 port (real HTTP), one per test process."""
    from tests.helpers.s3 import moto_server

    with moto_server() as server:
        yield server
