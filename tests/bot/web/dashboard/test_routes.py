"""The dashboard's HTTP surface with FastAPI's TestClient: auth, CSRF, rate limit, actions, audit."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bot.web.dashboard.auth import SESSION_COOKIE
from core.db import session_scope
from core.dbclock import db_now
from core.models import AuditLog, Job, LoginFailure, Subject, User
from core.settings import Settings
from core.storage import storage_from_settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, SECRET_TOKEN, Seeded, csrf_from, login

PUBLIC = {"/admin/login", "/admin"}


def _admin_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) the dashboard serves, with 1 for each path parameter."""
    from bot.web.dashboard import routes_auth, routes_jobs, routes_people, routes_sql

    routes = []
    for module in (routes_auth, routes_jobs, routes_people, routes_sql):
        for route in module.router.routes:
            full = "/admin" + route.path  # type: ignore[attr-defined]
            if isinstance(route, APIRoute) and full not in PUBLIC:
                path = re.sub(r"\{[^}]+\}", "1", full)
                routes += [(method, path) for method in sorted(route.methods)]
    return routes


def _audit(settings: Settings) -> list[tuple[str, str, str]]:
    with session_scope(settings) as session:
        rows = session.execute(select(AuditLog.actor, AuditLog.action, AuditLog.target).order_by(AuditLog.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def test_every_page_and_api_needs_a_session(client: TestClient, seeded: Seeded) -> None:
    routes = _admin_routes(client)
    assert len(routes) >= 20 and ("POST", "/admin/sql") in routes
    for method, path in routes:
        response = client.request(method, path, follow_redirects=False)
        if path.startswith("/admin/api/"):
            assert response.status_code == 401, (method, path)
        else:
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/admin/login?next="), (method, path)


def test_forged_or_missing_cookie_is_not_a_session(client: TestClient, seeded: Seeded) -> None:
    client.cookies.set(SESSION_COOKIE, "eyJ1Ijoicm9vdCJ9.forged.signature", path="/admin")
    assert client.get("/admin/", follow_redirects=False).status_code == 303


def test_login_sets_a_safe_cookie_and_logout_ends_it(
    client: TestClient, db_settings: Settings, seeded: Seeded
) -> None:
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={
            "username": ADMIN,
            "password": PASSWORD,
            "csrf_token": csrf_from(page.text),
            "next": "/admin/jobs",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/admin/jobs"
    cookie = next(v for v in response.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http in this test; see the https test
    stolen = client.cookies.get(SESSION_COOKIE)
    token = csrf_from(client.get("/admin/").text)
    assert client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    client.cookies.set(SESSION_COOKIE, stolen, path="/admin")  # the old cookie no longer works
    assert client.get("/admin/", follow_redirects=False).status_code == 303
    assert [a[1] for a in _audit(db_settings)] == ["login", "logout"]


def test_logout_ends_the_session_in_every_process_and_after_a_restart(
    client: TestClient, db_settings: Settings, seeded: Seeded
) -> None:
    """Logout lives in the database: a second bot process, or this one restarted, refuses
    the cookie too (the secret is shared, so it still verifies there)."""
    from bot.web.app import create_app

    token = login(client)
    cookie = client.cookies.get(SESSION_COOKIE)
    with TestClient(create_app(db_settings), base_url="http://testserver") as other:
        other.cookies.set(SESSION_COOKIE, cookie, path="/admin")
        assert other.get("/admin/", follow_redirects=False).status_code == 200  # the same session there
        assert (
            client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False).status_code
            == 303
        )
        assert other.get("/admin/", follow_redirects=False).status_code == 303
    with TestClient(create_app(db_settings), base_url="http://testserver") as restarted:
        restarted.cookies.set(SESSION_COOKIE, cookie, path="/admin")
        assert restarted.get("/admin/", follow_redirects=False).status_code == 303
    login(client)  # a new login works as before
    assert client.get("/admin/", follow_redirects=False).status_code == 200


def test_the_login_limit_holds_across_processes_and_restarts(db_settings: Settings, seeded: Seeded) -> None:
    """Failed attempts are counted in the database: spreading them over two bot processes,
    or restarting the bot, does not buy an attacker more guesses."""
    from bot.web.app import create_app

    def attempt(app: object, password: str) -> int:
        with TestClient(app, base_url="http://testserver") as c:  # type: ignore[arg-type]
            page = c.get("/admin/login")
            data = {"username": ADMIN, "password": password, "csrf_token": csrf_from(page.text)}
            return c.post("/admin/login", data=data, follow_redirects=False).status_code

    first, second = create_app(db_settings), create_app(db_settings)
    assert [attempt(first if n % 2 else second, "nope") for n in range(5)] == [401] * 5
    assert attempt(create_app(db_settings), PASSWORD) == 429  # a third process, or after a restart
    with session_scope(db_settings) as session:  # the window has passed
        session.execute(update(LoginFailure).values(at=db_now(-301)))
    assert attempt(second, PASSWORD) == 303
    with session_scope(db_settings) as session:  # that account's failures from here are cleared on success
        left = session.scalars(select(LoginFailure.key)).all()
        assert left and all(key.startswith("ip:") for key in left)  # the source's count stays


def test_cookie_is_secure_over_https(db_settings: Settings, seeded: Seeded) -> None:
    from bot.web.app import create_app

    with TestClient(create_app(db_settings), base_url="https://admin.example") as client:
        page = client.get("/admin/login")
        response = client.post(
            "/admin/login",
            data={"username": ADMIN, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
            follow_redirects=False,
        )
    assert "Secure" in next(
        v for v in response.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE)
    )


def test_open_redirect_after_login_is_refused(client: TestClient, seeded: Seeded) -> None:
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={
            "username": ADMIN,
            "password": PASSWORD,
            "csrf_token": csrf_from(page.text),
            "next": "//evil.example",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/admin/"


def test_login_form_needs_its_csrf_token(client: TestClient, seeded: Seeded) -> None:
    client.get("/admin/login")
    response = client.post("/admin/login", data={"username": ADMIN, "password": PASSWORD, "csrf_token": "x"})
    assert response.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_wrong_password_then_rate_limited(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    for _ in range(5):
        page = client.get("/admin/login")
        response = client.post(
            "/admin/login", data={"username": ADMIN, "password": "nope", "csrf_token": csrf_from(page.text)}
        )
        assert response.status_code == 401 and "Wrong name or password" in response.text
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login", data={"username": ADMIN, "password": PASSWORD, "csrf_token": csrf_from(page.text)}
    )
    assert response.status_code == 429 and "Too many failed attempts" in response.text
    assert SESSION_COOKIE not in client.cookies
    assert [a[1] for a in _audit(db_settings)] == ["login.failed"] * 5


def test_every_post_needs_the_csrf_token(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    login(client)
    posts = [path for method, path in _admin_routes(client) if method == "POST"]
    assert {"/admin/logout", "/admin/jobs/1/cancel", "/admin/sql", "/admin/subjects/1/delete"} <= set(posts)
    for path in posts:
        for data in ({}, {"csrf_token": "wrong"}):
            response = client.post(path, data=data, follow_redirects=False)
            assert response.status_code == 403, path
    with session_scope(db_settings) as session:  # nothing happened
        assert session.get(Job, 1).status == "queued"  # type: ignore[union-attr]
        assert session.get(Subject, seeded.subject) is not None


def test_pages_render(client: TestClient, seeded: Seeded) -> None:
    login(client)
    pages = [
        "/admin/",
        "/admin/jobs",
        "/admin/jobs?status=failed&kind=sample&sort=created&dir=asc",
        f"/admin/jobs/{seeded.jobs['failed']}",
        "/admin/people",
        "/admin/people?q=ann",
        f"/admin/people/{seeded.users[0]}",
        "/admin/subjects",
        f"/admin/subjects/{seeded.subject}",
        "/admin/images",
        "/admin/audit",
        "/admin/sql",
        "/admin/sql?saved=gpu_time_per_subject",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert SECRET_TOKEN not in response.text
    assert "CUDA out of memory" in client.get(f"/admin/jobs/{seeded.jobs['failed']}").text
    assert client.get(f"/admin/files/image/{seeded.image}").headers["content-type"] == "image/png"
    assert client.get(f"/admin/files/photo/{seeded.photo}").content[:4] == b"\x89PNG"
    assert client.get("/admin/jobs/99999").status_code == 404


def test_overview_api_matches_database(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    login(client)
    data = client.get("/admin/api/overview").json()
    assert data["jobs_by_status"] == {"queued": 2, "running": 1, "succeeded": 2, "failed": 1, "cancelled": 1}
    assert data["workers_online"] == 1 and data["workers"][0]["gpus"] == ["NVIDIA H100 (80.0 GB)"]


def test_cancel_and_retry(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    token = login(client)
    queued, failed = seeded.jobs["queued"], seeded.jobs["failed"]
    response = client.post(f"/admin/jobs/{queued}/cancel", data={"csrf_token": token})
    assert response.status_code == 200 and "Cancelled." in response.text
    response = client.post(f"/admin/jobs/{failed}/retry", data={"csrf_token": token}, follow_redirects=False)
    new_id = int(response.headers["location"].split("?")[0].rsplit("/", 1)[1])
    with session_scope(db_settings) as session:
        assert session.get(Job, queued).status == "cancelled"  # type: ignore[union-attr]
        new, old = session.get(Job, new_id), session.get(Job, failed)
        assert new is not None and old is not None
        assert (new.status, new.kind, new.params, new.owner_id) == (
            "queued",
            old.kind,
            old.params,
            old.owner_id,
        )
        assert [s.id for s in new.subjects] == [seeded.subject] and old.status == "failed"
    response = client.post(f"/admin/jobs/{seeded.jobs['running']}/retry", data={"csrf_token": token})
    assert "Only failed or cancelled jobs can be retried (running)" in response.text
    actions = [(a[1], a[2]) for a in _audit(db_settings)]
    assert ("job.cancel", f"job:{queued}") in actions and ("job.retry", f"job:{failed}") in actions


def test_people_quotas_and_block(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    token = login(client)
    bob = seeded.users[1]
    data = {"csrf_token": token, "max_concurrent_jobs": "5", "trainings_per_day": "", "images_per_day": "7"}
    assert "Quotas saved." in client.post(f"/admin/people/{bob}/quotas", data=data).text
    bad = dict(data, images_per_day="-3")
    assert "whole number" in client.post(f"/admin/people/{bob}/quotas", data=bad).text
    assert (
        "Blocked."
        in client.post(f"/admin/people/{bob}/block", data={"csrf_token": token, "blocked": "1"}).text
    )
    with session_scope(db_settings) as session:
        user = session.get(User, bob)
        assert user is not None
        assert (user.max_concurrent_jobs, user.trainings_per_day, user.images_per_day) == (5, None, 7)
        assert user.is_blocked
    assert (
        "Unblocked."
        in client.post(f"/admin/people/{bob}/block", data={"csrf_token": token, "blocked": "0"}).text
    )
    actions = [a[1] for a in _audit(db_settings)]
    assert actions[-3:] == ["person.quotas", "person.block", "person.unblock"]


def test_subject_delete_cleans_storage(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    token = login(client)
    storage = storage_from_settings(db_settings)
    assert list(storage.list(f"subjects/{seeded.subject}/"))
    response = client.post(f"/admin/subjects/{seeded.subject}/delete", data={"csrf_token": token})
    assert "still active" in response.text  # queued and running samples use it
    with session_scope(db_settings) as session:
        for job in session.scalars(select(Job).where(Job.status.in_(("queued", "running")))):
            job.status = "cancelled"
    response = client.post(f"/admin/subjects/{seeded.subject}/delete", data={"csrf_token": token})
    assert "Deleted subject" in response.text
    assert list(storage.list(f"subjects/{seeded.subject}/")) == []
    assert storage.exists(f"images/{seeded.jobs['succeeded']}/0.png")  # delivered images stay
    with session_scope(db_settings) as session:
        assert session.get(Subject, seeded.subject) is None
    assert ("subject.delete", f"subject:{seeded.subject}") in [(a[1], a[2]) for a in _audit(db_settings)]


def test_sql_console_page_and_csv(client: TestClient, db_settings: Settings, seeded: Seeded) -> None:
    token = login(client)
    sql = "SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status"
    page = client.post("/admin/sql", data={"csrf_token": token, "sql": sql})
    assert page.status_code == 200 and "<td>failed</td>" in page.text and "5 row(s)" in page.text
    csv = client.post("/admin/sql/csv", data={"csrf_token": token, "sql": sql})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.headers["content-disposition"].startswith("attachment")
    assert csv.text.splitlines()[:2] == ["status,n", "cancelled,1"]
    refused = client.post("/admin/sql", data={"csrf_token": token, "sql": "DELETE FROM jobs"})
    assert refused.status_code == 400 and "Only SELECT" in refused.text
    secret = client.post("/admin/sql", data={"csrf_token": token, "sql": "SELECT * FROM conversations"})
    assert secret.status_code == 400 and SECRET_TOKEN not in secret.text
    actions = [a[1] for a in _audit(db_settings)]
    assert actions[1:] == ["sql.run", "sql.export", "sql.run.refused", "sql.run.refused"]


@pytest.mark.parametrize(
    "name", ["jobs_per_day", "failures_by_error", "busiest_people", "gpu_time_per_subject"]
)
def test_saved_queries_run(db_settings: Settings, seeded: Seeded, name: str) -> None:
    from bot.web.dashboard.routes_sql import SAVED_BY_NAME
    from bot.web.dashboard.sqlconsole import run_query

    result = run_query(db_settings, SAVED_BY_NAME[name].text(db_settings.is_sqlite))
    assert result.rows, name
    if name == "gpu_time_per_subject":
        assert result.rows[0][1] == "rex" and result.rows[0][4:] == [3, pytest.approx(180, abs=3)]
