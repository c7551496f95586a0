"""The web app's own defences: the same security headers on every kind of response,
X-Forwarded-* believed only from configured proxies, and a login limit that slows an
attacker's source down without locking the account for everyone else."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select, text, update

from bot.process.runtime import run_bot
from bot.web.app import create_app
from bot.web.dashboard import create_dashboard_app
from bot.web.dashboard.auth import LoginLimiter, create_admin
from bot.web.security import SECURITY_HEADERS
from core.db import get_engine, session_scope
from core.dbclock import db_now
from core.models import AuditLog, LoginFailure
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, csrf_from, login, seed
from tests.bot.web.dashboard.serving import free_port, serve

ATTACKER, ADMIN_DESK = ("198.51.100.7", 40000), ("192.0.2.10", 40001)


def _assert_secured(response: Response, what: str, *, cacheable: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (what, response.status_code, name)
    if not cacheable:
        assert response.headers.get("cache-control") == "no-store", (
            what,
            response.headers.get("cache-control"),
        )


def test_every_kind_of_response_carries_the_headers(sqlite_settings: Settings) -> None:
    create_admin(sqlite_settings, ADMIN, PASSWORD)
    seeded = seed(sqlite_settings)
    with TestClient(create_app(sqlite_settings), raise_server_exceptions=False) as client:
        anonymous = {
            "playground": client.get("/"),
            "health": client.get("/healthz"),
            "metrics": client.get("/metrics"),
            "login page": client.get("/admin/login"),
            "redirect to login": client.get("/admin/jobs", follow_redirects=False),
            "api without session": client.get("/admin/api/overview"),
            "playground api error": client.post("/api/chat", data={"text": "hi"}),
            "playground feed": client.get("/api/feed"),
            "404": client.get("/no/such/page"),
            "405": client.put("/healthz"),
        }
        token = login(client)
        signed_in = {
            "api": client.get("/admin/api/overview"),
            "page": client.get("/admin/"),
            "image file": client.get(f"/admin/files/image/{seeded.image}"),
            "csv": client.post("/admin/sql/csv", data={"csrf_token": token, "sql": "SELECT id FROM jobs"}),
            "csrf refused": client.post("/admin/sql", data={"csrf_token": "x", "sql": "SELECT 1"}),
        }
        static = {
            "playground static": client.get("/static/playground.js"),
            "dashboard static": client.get("/admin/static/dashboard.css"),
        }
        with get_engine(sqlite_settings).begin() as conn:  # a real crash: the table is gone
            conn.execute(text("DROP TABLE workers"))
        crash = client.get("/healthz")
    assert {r.status_code for r in anonymous.values()} >= {200, 303, 401, 404, 405}
    assert crash.status_code == 500
    for what, response in {**anonymous, **signed_in, "500": crash}.items():
        _assert_secured(response, what)
    for what, response in static.items():
        assert response.status_code == 200
        _assert_secured(response, what, cacheable=True)


def test_the_standalone_dashboard_carries_the_headers(sqlite_settings: Settings) -> None:
    with TestClient(create_dashboard_app(sqlite_settings)) as client:
        for what, response in {
            "root redirect": client.get("/", follow_redirects=False),
            "api": client.get("/admin/api/overview"),
            "404": client.get("/nope"),
            "static": client.get("/admin/static/dashboard.js"),
        }.items():
            _assert_secured(response, what, cacheable=what == "static")


# -- X-Forwarded-For ------------------------------------------------------------------------


def _failed_login_from(base_url: str, **headers: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        page = client.get("/admin/login")
        data = {"username": ADMIN, "password": "wrong password", "csrf_token": csrf_from(page.text)}
        return client.post("/admin/login", data=data, headers=headers)


def _login_ips(settings: Settings) -> list[str]:
    with session_scope(settings) as session:
        rows = session.scalars(
            select(AuditLog.details).where(AuditLog.action == "login.failed").order_by(AuditLog.id)
        )
        return [details["ip"] for details in rows]


def test_forwarded_headers_only_from_configured_proxies(sqlite_settings: Settings, tmp_path: Path) -> None:
    create_admin(sqlite_settings, ADMIN, PASSWORD)
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    with serve(sqlite_settings, tmp_path) as server:  # `dreambot dashboard`, no proxy configured
        response = _failed_login_from(server.url, **forged)
        assert response.status_code == 401 and "Secure" not in response.headers.get("set-cookie", "")
    with serve(sqlite_settings, tmp_path, DREAMBOT_TRUSTED_PROXIES="127.0.0.1") as server:
        response = _failed_login_from(server.url, **forged)
        assert response.status_code == 401 and "Secure" in response.headers.get("set-cookie", "")
    assert _login_ips(sqlite_settings) == ["127.0.0.1", "203.0.113.9"]


async def test_dreambot_up_ignores_forwarded_for_from_an_untrusted_peer(sqlite_settings: Settings) -> None:
    create_admin(sqlite_settings, ADMIN, PASSWORD)
    settings = sqlite_settings.model_copy(update={"web_port": free_port()})
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(settings, create_app(settings), stop))
    base = f"http://127.0.0.1:{settings.web_port}"
    try:
        for _ in range(200):
            try:
                await asyncio.to_thread(httpx.get, f"{base}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        response = await asyncio.to_thread(_failed_login_from, base, **{"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 401
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert _login_ips(settings) == ["127.0.0.1"]


def test_a_configured_proxy_is_believed_and_others_are_not(sqlite_settings: Settings) -> None:
    create_admin(sqlite_settings, ADMIN, PASSWORD)
    proxied = sqlite_settings.model_copy(update={"trusted_proxies": "10.0.0.0/8, 192.168.1.1"})
    for peer, expected in ((("10.1.2.3", 1), "203.0.113.9"), (("172.16.0.9", 1), "172.16.0.9")):
        with TestClient(create_app(proxied), client=peer) as client:
            page = client.get("/admin/login")
            data = {"username": ADMIN, "password": "nope", "csrf_token": csrf_from(page.text)}
            client.post("/admin/login", data=data, headers={"X-Forwarded-For": "203.0.113.9"})
        assert _login_ips(sqlite_settings)[-1] == expected


# -- the login limit ------------------------------------------------------------------------


def _attempt(client: TestClient, password: str, username: str = ADMIN) -> int:
    page = client.get("/admin/login")
    data = {"username": username, "password": password, "csrf_token": csrf_from(page.text)}
    return client.post("/admin/login", data=data, follow_redirects=False).status_code


def test_an_attackers_failures_do_not_lock_the_account_for_another_source(db_settings: Settings) -> None:
    create_admin(db_settings, ADMIN, PASSWORD)
    app = create_app(db_settings)
    with TestClient(app, client=ATTACKER) as attacker:
        codes = [_attempt(attacker, f"guess {n}") for n in range(12)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
        assert _attempt(attacker, PASSWORD) == 429  # even the right password waits, from there
    with TestClient(app, client=ADMIN_DESK) as desk:
        assert _attempt(desk, PASSWORD) == 303  # the admin is not locked out
    with session_scope(db_settings) as session:  # the attacker's wait ends; no lasting lock
        session.execute(update(LoginFailure).values(at=db_now(-120)))
    with TestClient(app, client=ATTACKER) as attacker:
        assert _attempt(attacker, "another guess") == 401


def test_the_wait_grows_with_each_failure(db_settings: Settings) -> None:
    limiter = LoginLimiter(db_settings)
    keys = limiter.keys(ADMIN, ATTACKER[0])
    waits = []
    for _ in range(10):
        limiter.failed(*keys)
        waits.append(limiter.retry_after(*keys))
    assert waits[:4] == [0, 0, 0, 0]
    assert all(later > earlier for earlier, later in pairwise(waits[4:]))
    assert 0 < waits[4] <= 15 and waits[-1] <= 3600
    assert limiter.retry_after(*limiter.keys(ADMIN, ADMIN_DESK[0])) == 0  # another source: no wait


@pytest.mark.parametrize("db_settings", ["sqlite"], indirect=True)
def test_one_source_guessing_many_accounts_is_slowed(db_settings: Settings) -> None:
    with TestClient(create_app(db_settings), client=ATTACKER) as attacker:
        codes = [_attempt(attacker, "guess", username=f"user{n}") for n in range(22)]
    assert codes[:20] == [401] * 20 and codes[20:] == [429, 429]
    with TestClient(create_app(db_settings), client=ADMIN_DESK) as desk:
        assert _attempt(desk, "guess", username="user0") == 401
