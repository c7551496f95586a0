"""The dashboard in headless Chromium against a real uvicorn server (the playground's app).

Log in; the overview's numbers match the database; a job cancelled from its page is
cancelled in the database; the SQL console shows rows, draws a chart and exports CSV.
Screenshots land in test-artifacts/dashboard-*.png.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from bot.web.app import create_app
from bot.web.dashboard.auth import create_admin
from core.db import session_scope
from core.models import Job, Worker
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, seed
from tests.helpers.browser import LiveServer, chromium, screenshot


def _db_counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as session:
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        counts["workers"] = session.scalar(select(func.count(Worker.name))) or 0
    return counts


def test_dashboard_in_a_browser(sqlite_settings: Settings, tmp_path: Path) -> None:
    # The seeded worker's heartbeat must still count as online when the overview is drawn,
    # after a browser start and a login on a loaded machine: the test profile's 0.3 s
    # heartbeat allows only ~6 s; a 60 s one leaves minutes.
    settings = sqlite_settings.model_copy(update={"heartbeat_interval": 60.0})
    create_admin(settings, ADMIN, PASSWORD)
    seeded = seed(settings)
    errors: list[str] = []
    with LiveServer(create_app(settings)) as server, chromium() as browser:
        page = browser.new_page(accept_downloads=True)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("dialog", lambda d: d.accept())

        # Log in: an unauthenticated visit lands on the login form, then comes back.
        page.goto(f"{server.url}/admin/jobs")
        assert "/admin/login" in page.url
        screenshot(page, "dashboard-login")
        page.fill("input[name=username]", ADMIN)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/admin/jobs")

        # Overview: every number equals the database's, and the charts are drawn.
        page.goto(f"{server.url}/admin/")
        counts = _db_counts(settings)
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            shown = page.get_by_test_id(f"jobs-{status}").inner_text()
            assert int(shown) == counts.get(status, 0), status
        assert int(page.get_by_test_id("workers-online").inner_text()) == counts["workers"]
        assert "NVIDIA H100" in page.get_by_test_id("workers").inner_text()
        page.wait_for_selector("[data-chart=throughput] svg")
        assert page.locator("[data-chart] svg").count() == 4
        screenshot(page, "dashboard-overview")

        # Cancel a queued job from its page.
        job_id = seeded.jobs["queued"]
        page.goto(f"{server.url}/admin/jobs/{job_id}")
        page.get_by_role("button", name="Cancel job").click()
        page.wait_for_selector("text=Cancelled.")
        assert page.get_by_test_id("job-status").inner_text() == "cancelled"
        with session_scope(settings) as session:
            assert session.get(Job, job_id).status == "cancelled"  # type: ignore[union-attr]
        screenshot(page, "dashboard-job-cancelled")

        # SQL console: rows, a chart, a CSV download.
        page.goto(f"{server.url}/admin/sql")
        sql = "SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status"
        page.get_by_test_id("sql").fill(sql)
        page.get_by_role("button", name="Run").click()
        table = page.get_by_test_id("sql-result")
        table.wait_for()
        cells = [r.locator("td").all_inner_texts() for r in table.locator("tbody tr").all()]
        expected = sorted(_db_counts(settings).items())
        assert cells == [[s, str(n)] for s, n in expected if s != "workers"]
        page.wait_for_selector("#sql-chart svg rect")
        screenshot(page, "dashboard-sql")
        with page.expect_download() as download_info:
            page.get_by_test_id("csv").click()
        download = download_info.value
        csv_path = tmp_path / "result.csv"
        download.save_as(csv_path)
        lines = csv_path.read_text().splitlines()
        assert lines[0] == "status,n" and lines[1:] == [f"{row[0]},{row[1]}" for row in cells]

        # The audit log shows what this admin did.
        page.goto(f"{server.url}/admin/audit")
        audit = page.get_by_test_id("audit").inner_text()
        assert "job.cancel" in audit and "sql.export" in audit and "login" in audit
        screenshot(page, "dashboard-audit")
    assert errors == []  # no script error and no Content-Security-Policy violation
