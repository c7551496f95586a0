"""The SQL console's PostgreSQL role: `dreambot admin console-role` makes one the console
accepts, and `dreambot dashboard` / `dreambot up` keep the console off (one line, the rest
of the dashboard working) when its role is a superuser or may write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from bot.cli.main import app
from bot.web.dashboard.auth import create_admin
from bot.web.dashboard.console_role import console_off_reason, role_problem
from bot.web.dashboard.sqlconsole import QueryFailed, run_postgres, run_query
from core.db import dispose_engines, session_scope
from core.models import AuditLog
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, csrf_from, login, seed
from tests.bot.web.dashboard.serving import serve
from tests.helpers.profile import PG_URL, settings_env

CONSOLE_OFF = "SQL console off"


def _admin_sql(statement: str) -> None:
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(statement))
    engine.dispose()


@pytest.fixture
def role_name(pg_settings: Settings) -> Iterator[str]:
    """A role name for this test; the role is dropped afterwards if it was made."""
    role = f"ro_{pg_settings.database_schema}"
    yield role
    dispose_engines()
    _admin_sql(
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f'DROP OWNED BY "{role}"; DROP ROLE "{role}"; END IF; END $$'
    )


def _make_role(settings: Settings, role: str) -> str:
    result = CliRunner().invoke(app, ["admin", "console-role", "--role", role], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("DREAMBOT_CONSOLE_DATABASE_URL=postgresql")
    return line.split("=", 1)[1]


def test_console_role_command_makes_a_role_that_can_only_read(pg_settings: Settings, role_name: str) -> None:
    url = _make_role(pg_settings, role_name)
    schema = pg_settings.database_schema or "public"
    assert make_url(url).username == role_name and role_problem(url, schema) is None
    create_admin(pg_settings, ADMIN, PASSWORD)
    seed(pg_settings)
    settings = pg_settings.model_copy(update={"console_database_url": url})
    assert run_query(settings, "SELECT username FROM admin_accounts").rows == [["root"]]
    slot = f"evil_{uuid.uuid4().hex[:10]}"
    # Without the parser, the role alone withholds secrets, writes and server functions.
    for sql in (
        "SELECT password_hash FROM admin_accounts",
        "SELECT interaction_token FROM conversations",
        "SELECT * FROM conversations",
        "SELECT to_jsonb(a) FROM admin_accounts a",
        "SELECT pg_stat_reset()",
        "SELECT pg_switch_wal()",
        f"SELECT pg_create_physical_replication_slot('{slot}', true)",
        "SELECT pg_read_file('postgresql.conf')",
        "SELECT * FROM pg_hba_file_rules()",
        "SELECT * FROM pg_show_all_file_settings()",
        "SELECT nextval('jobs_id_seq')",
        "DELETE FROM jobs",
        "CREATE TABLE evil (i int)",
    ):
        with pytest.raises(QueryFailed):
            run_postgres(url, sql, schema=schema, row_limit=10, time_limit=5)
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        assert (
            conn.scalar(text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot})
            == 0
        )
    engine.dispose()
    # Run again (after an upgrade, say): the role is refreshed, still acceptable.
    assert role_problem(_make_role(pg_settings, role_name), schema) is None


def test_console_role_command_on_sqlite_says_it_is_not_needed(sqlite_settings: Settings) -> None:
    result = CliRunner().invoke(app, ["admin", "console-role"], env=settings_env(sqlite_settings))
    assert result.exit_code == 1 and "needs no role" in result.output


def test_roles_that_may_do_more_than_read_are_refused(pg_settings: Settings, role_name: str) -> None:
    schema = pg_settings.database_schema or "public"
    superuser = console_off_reason(pg_settings)  # the default: the main URL
    assert superuser is not None and "is a superuser" in superuser
    assert "dreambot admin console-role" in superuser and "DREAMBOT_CONSOLE_DATABASE_URL" in superuser
    url = _make_role(pg_settings, role_name)
    for grant, expected in [
        (f'GRANT INSERT ON "{schema}"."jobs" TO "{role_name}"', "may write to jobs"),
        (f'GRANT UPDATE ("status") ON "{schema}"."jobs" TO "{role_name}"', "may write to jobs"),
        (f'GRANT CREATE ON SCHEMA "{schema}" TO "{role_name}"', f"may create objects in schema {schema}"),
        (f'GRANT pg_read_all_settings TO "{role_name}"', "member of pg_read_all_settings"),
        (
            f'GRANT EXECUTE ON FUNCTION pg_stat_reset() TO "{role_name}"',
            "server functions such as pg_stat_reset",
        ),
    ]:
        _admin_sql(grant)
        problem = role_problem(url, schema)
        assert problem is not None and expected in problem, (grant, problem)
        if "pg_stat_reset" in grant:  # the command does not take back grants on server functions
            _admin_sql(f'REVOKE EXECUTE ON FUNCTION pg_stat_reset() FROM "{role_name}"')
        _make_role(pg_settings, role_name)  # it takes back table, column, schema and role grants
        assert role_problem(url, schema) is None, grant


@contextmanager
def _logged_in(base: str) -> Iterator[tuple[httpx.Client, str]]:
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client, login(client)  # type: ignore[arg-type]


def _audit(settings: Settings) -> list[str]:
    with session_scope(settings) as session:
        return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


@pytest.mark.parametrize("command", [("dashboard",), ("up", "--no-workers")])
def test_superuser_console_is_off_and_the_rest_works(
    pg_settings: Settings, tmp_path: Path, command: tuple[str, ...]
) -> None:
    create_admin(pg_settings, ADMIN, PASSWORD)
    seed(pg_settings)
    with serve(pg_settings, tmp_path, command=command) as server:
        lines = [line for line in server.output().splitlines() if CONSOLE_OFF in line]
        assert len(lines) == 1 and "superuser" in lines[0] and "dreambot admin console-role" in lines[0]
        with _logged_in(server.url) as (client, token):
            page = client.get("/admin/sql")
            assert page.status_code == 200 and CONSOLE_OFF in page.text
            refused = client.post("/admin/sql", data={"csrf_token": token, "sql": "SELECT 1"})
            assert refused.status_code == 400 and CONSOLE_OFF in refused.text
            csv = client.post("/admin/sql/csv", data={"csrf_token": token, "sql": "SELECT 1"})
            assert csv.status_code == 400 and "text/csv" not in csv.headers["content-type"]
            for path in ("/admin/", "/admin/jobs", "/admin/people", "/admin/api/overview"):
                assert client.get(path).status_code == 200, path
    assert _audit(pg_settings)[-2:] == ["sql.run.refused", "sql.export.refused"]


def test_console_runs_as_the_read_only_role(pg_settings: Settings, tmp_path: Path, role_name: str) -> None:
    url = _make_role(pg_settings, role_name)
    create_admin(pg_settings, ADMIN, PASSWORD)
    seed(pg_settings)
    with serve(pg_settings, tmp_path, DREAMBOT_CONSOLE_DATABASE_URL=url) as server:
        assert CONSOLE_OFF not in server.output()
        with _logged_in(server.url) as (client, token):
            page = client.post(
                "/admin/sql", data={"csrf_token": token, "sql": "SELECT username FROM admin_accounts"}
            )
            assert page.status_code == 200 and "<td>root</td>" in page.text
            assert csrf_from(page.text) == token
