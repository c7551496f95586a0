"""Fixtures for the dashboard tests: a seeded database with an admin, a web client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from bot.dashboard.auth import create_admin
from bot.web.app import create_app
from core.settings import Settings
from tests.dashboard.seed import ADMIN, PASSWORD, Seeded, seed


@pytest.fixture
def seeded(db_settings: Settings) -> Seeded:
    create_admin(db_settings, ADMIN, PASSWORD)
    return seed(db_settings)


@pytest.fixture
def client(db_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(db_settings), base_url="http://testserver") as c:
        yield c
