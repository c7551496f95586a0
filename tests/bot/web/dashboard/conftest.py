"""Fixtures for the dashboard tests: a seeded database with an admin, a web client, and the
SQL console's three set-ups (SQLite; PostgreSQL as the main superuser; PostgreSQL as the
read-only role `dreambot admin console-role` makes)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from bot.web.app import create_app
from bot.web.dashboard.auth import create_admin
from bot.web.dashboard.console_role import create_console_role
from core.db import dispose_engines
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, Seeded, seed
from tests.helpers.profile import PG_URL


@pytest.fixture
def seeded(db_settings: Settings) -> Seeded:
    create_admin(db_settings, ADMIN, PASSWORD)
    return seed(db_settings)


@pytest.fixture
def client(db_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(db_settings), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def console_role_url(pg_settings: Settings) -> Iterator[str]:
    """The console's read-only role for this test's schema, made as the operator's command
    makes it (then dropped): its URL."""
    role = f"ro_{pg_settings.database_schema}"
    yield create_console_role(pg_settings, role, secrets.token_urlsafe(12))
    dispose_engines()
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres-main", "postgres-role"])
def console_db(request: pytest.FixtureRequest) -> Settings:
    """Settings whose SQL console runs on SQLite, on PostgreSQL as the main (super)user,
    or on PostgreSQL as the read-only role."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_settings")
    settings: Settings = request.getfixturevalue("pg_settings")
    if request.param == "postgres-main":
        return settings
    url = request.getfixturevalue("console_role_url")
    return settings.model_copy(update={"console_database_url": url})
