"""The SQL console on a real database (SQLite and PostgreSQL): reads work, nothing else does.

Each refusal is checked at two layers: through `run_query` (parser first), and straight
on the read-only connection with the parser bypassed, so either layer alone holds.
The database checksum (every table's rows and columns) is the same afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.web.dashboard.sqlconsole import (
    QueryFailed,
    RefusedStatement,
    run_postgres,
    run_query,
    run_sqlite,
    to_csv,
)
from core.settings import Settings
from tests.bot.web.dashboard.seed import SECRET_TOKEN, Seeded, database_checksum

ATTACKS = [
    "DELETE FROM jobs",
    "UPDATE jobs SET status = 'failed'",
    "INSERT INTO users (platform, platform_user_id, display_name, is_blocked) VALUES ('x', 'y', 'z', false)",
    "DROP TABLE jobs",
    "CREATE TABLE evil (id int)",
    "ATTACH DATABASE 'evil.db' AS evil",
    "PRAGMA writable_schema=1",
    "SELECT 1; DELETE FROM jobs",
    "SELECT interaction_token FROM conversations",
    "SELECT * FROM conversations",
    "SELECT password_hash FROM admin_accounts",
]
# The slow statement: counting a recursion of 10^9 rows takes minutes on either database.
SLOW = (
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 1000000000) "
    "SELECT count(*) FROM r"
)


@pytest.fixture
def console_settings(db_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """On PostgreSQL, the console as the read-only role `dreambot admin console-role` makes."""
    if db_settings.is_sqlite:
        return db_settings
    url = request.getfixturevalue("console_role_url")
    return db_settings.model_copy(update={"console_database_url": url})


def _bypass(settings: Settings, sql: str, **kw: float) -> object:
    """Run on the console's read-only connection without the parser check."""
    limit = {"row_limit": 1000, "time_limit": kw.get("time_limit", 5.0)}
    if settings.is_sqlite:
        return run_sqlite(Path(make_url(settings.resolved_database_url).database or ""), sql, **limit)
    url = settings.console_database_url or settings.resolved_database_url
    return run_postgres(url, sql, schema=settings.database_schema, **limit)


def test_select_returns_rows(db_settings: Settings, seeded: Seeded) -> None:
    result = run_query(db_settings, "SELECT id, status FROM jobs ORDER BY id")
    assert result.columns == ["id", "status"]
    assert len(result.rows) == 7 and not result.truncated
    statuses = dict(result.rows)
    assert all(statuses[job_id] == status for status, job_id in seeded.jobs.items())


def test_json_and_dates_are_shown_as_text(db_settings: Settings, seeded: Seeded) -> None:
    result = run_query(db_settings, f"SELECT params, created_at FROM jobs WHERE id = {seeded.jobs['failed']}")
    params, created = result.rows[0]
    assert "zwx dog" in params and isinstance(created, str) and created[:2] == "20"


def test_row_limit_truncates(db_settings: Settings, seeded: Seeded) -> None:
    result = run_query(db_settings, "SELECT id FROM jobs ORDER BY id", row_limit=3)
    assert len(result.rows) == 3 and result.truncated and result.row_limit == 3
    exact = run_query(db_settings, "SELECT id FROM jobs", row_limit=7)
    assert len(exact.rows) == 7 and not exact.truncated


def test_row_limit_on_an_endless_result(db_settings: Settings, seeded: Seeded) -> None:
    # Only the limit + 1 rows are ever fetched, so an endless stream still comes back.
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r"
    result = run_query(db_settings, endless, row_limit=50, time_limit=10)
    assert [r[0] for r in result.rows] == list(range(1, 51)) and result.truncated


def test_time_limit_stops_a_long_query(db_settings: Settings, seeded: Seeded) -> None:
    before = database_checksum(db_settings)
    with pytest.raises(QueryFailed, match="limit"):
        run_query(db_settings, SLOW, time_limit=0.5)
    assert database_checksum(db_settings) == before


def test_default_limits_come_from_settings(db_settings: Settings, seeded: Seeded) -> None:
    settings = db_settings.model_copy(update={"console_row_limit": 2, "console_time_limit": 0.3})
    assert run_query(settings, "SELECT id FROM jobs").truncated
    with pytest.raises(QueryFailed):
        run_query(settings, SLOW)


@pytest.mark.parametrize("sql", ATTACKS)
def test_attacks_refused_and_database_unchanged(console_settings: Settings, seeded: Seeded, sql: str) -> None:
    before = database_checksum(console_settings)
    with pytest.raises(RefusedStatement):
        run_query(console_settings, sql)
    with pytest.raises(QueryFailed):  # the read-only connection alone refuses it too
        _bypass(console_settings, sql)
    assert database_checksum(console_settings) == before


def test_console_role_reads_what_it_may(console_settings: Settings, seeded: Seeded) -> None:
    result = run_query(console_settings, "SELECT id, platform, channel_id FROM conversations")
    assert len(result.rows) == 1
    assert run_query(console_settings, "SELECT username FROM admin_accounts").rows == [["root"]]


def test_secret_never_appears_in_any_allowed_result(db_settings: Settings, seeded: Seeded) -> None:
    result = run_query(db_settings, "SELECT id, platform, channel_id, thread_id FROM conversations")
    assert result.rows and SECRET_TOKEN not in repr(result.rows)


def test_postgres_write_inside_cte_is_refused_by_the_server(pg_settings: Settings) -> None:
    before = database_checksum(pg_settings)
    with pytest.raises(QueryFailed, match="data-modifying"):
        _bypass(pg_settings, "WITH d AS (DELETE FROM jobs RETURNING id) SELECT * FROM d")
    with pytest.raises(QueryFailed, match="read-only transaction"):  # EXPLAIN ANALYZE runs it
        _bypass(pg_settings, "EXPLAIN ANALYZE DELETE FROM jobs")
    with pytest.raises(QueryFailed):
        _bypass(pg_settings, "SELECT set_config('transaction_read_only', 'off', true)")
    assert database_checksum(pg_settings) == before


def test_sqlite_authorizer_hides_secrets_in_any_form(sqlite_settings: Settings) -> None:
    from tests.bot.web.dashboard.seed import seed

    seed(sqlite_settings)
    for sql in (
        "SELECT c.* FROM conversations AS c",
        "SELECT x FROM (SELECT interaction_token AS x FROM conversations)",
        "SELECT id FROM conversations WHERE interaction_token IS NOT NULL",
        "SELECT load_extension('evil')",
        "DETACH DATABASE main",
    ):
        with pytest.raises(QueryFailed):
            _bypass(sqlite_settings, sql)


def test_explain(db_settings: Settings, seeded: Seeded) -> None:
    sql = "EXPLAIN QUERY PLAN SELECT * FROM jobs" if db_settings.is_sqlite else "EXPLAIN SELECT * FROM jobs"
    result = run_query(db_settings, sql)
    assert result.rows and "jobs" in repr(result.rows).lower()


def test_csv_export_quotes_formulas() -> None:
    from bot.web.dashboard.sqlconsole import QueryResult

    result = QueryResult(["a", "b"], [[1, "=HYPERLINK(1)"], [None, "plain, text"]], False, 10, 1.0)
    assert to_csv(result).splitlines() == ["a,b", "1,'=HYPERLINK(1)", ',"plain, text"']
