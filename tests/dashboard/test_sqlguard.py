"""The SQL console's parser gate, on both dialects: what it refuses and what it lets through."""

from __future__ import annotations

import pytest

from bot.dashboard.sqlguard import RefusedStatement, check_statement

DIALECTS = ["sqlite", "postgres"]

REFUSED = {
    "delete": "DELETE FROM jobs",
    "update": "UPDATE jobs SET status = 'failed'",
    "insert": "INSERT INTO users (platform, platform_user_id) VALUES ('x', 'y')",
    "drop": "DROP TABLE jobs",
    "create": "CREATE TABLE x (id int)",
    "attach": "ATTACH DATABASE '/tmp/x.db' AS x",
    "pragma": "PRAGMA writable_schema=1",
    "two statements": "SELECT 1; DELETE FROM jobs",
    "select then select": "SELECT 1; SELECT 2",
    "write in a CTE": "WITH d AS (DELETE FROM jobs RETURNING id) SELECT * FROM d",
    "select into": "SELECT * INTO jobs_copy FROM jobs",
    "password hash": "SELECT username, password_hash FROM admin_accounts",
    "password hash via star": "SELECT * FROM admin_accounts",
    "interaction token": "SELECT interaction_token FROM conversations",
    "token via star": "SELECT * FROM conversations",
    "token via alias star": "SELECT c.* FROM conversations AS c",
    "token via subquery": "SELECT x.t FROM (SELECT interaction_token AS t FROM conversations) AS x",
    "token via derived star": "SELECT * FROM (SELECT * FROM conversations) AS x",
    "token via CTE": "WITH c AS (SELECT interaction_token FROM conversations) SELECT * FROM c",
    "token in WHERE": "SELECT id FROM conversations WHERE interaction_token LIKE 'a%'",
    "token quoted upper": 'SELECT "interaction_token" FROM CONVERSATIONS',
    "session table": "SELECT * FROM web_sessions",
    "unknown table": "SELECT * FROM secrets",
    "system catalogue": "SELECT * FROM sqlite_master",
    "empty": "   ;  ",
}
PG_ONLY_REFUSED = {
    "whole row": "SELECT c FROM conversations AS c",
    "whole row in function": "SELECT row_to_json(conversations) FROM conversations",
    "whole row field": "SELECT (c).interaction_token FROM conversations AS c",
    "to_jsonb star": "SELECT to_jsonb(c.*) FROM conversations AS c",
    "pg_authid": "SELECT rolpassword FROM pg_authid",
    "pg_stats": "SELECT * FROM pg_catalog.pg_stats",
    "other schema": "SELECT * FROM other.jobs",
    "query from text": "SELECT query_to_xml('SELECT password_hash FROM admin_accounts', true, true, '')",
    "file read": "SELECT pg_read_file('/etc/passwd')",
    "settings": "SELECT current_setting('data_directory')",
    "set_config": "SELECT set_config('transaction_read_only', 'off', true)",
    "lock rows": "SELECT * FROM jobs FOR UPDATE",
    "sequence": "SELECT nextval('jobs_id_seq')",
}
ALLOWED = [
    "SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY n DESC",
    "select id, platform, channel_id from conversations",
    "SELECT count(*) FROM conversations",
    "SELECT username, last_login_at FROM admin_accounts",
    "WITH f AS (SELECT * FROM jobs WHERE status = 'failed') SELECT kind, count(*) FROM f GROUP BY kind",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r",
    "SELECT j.id, u.display_name FROM jobs AS j JOIN users AS u ON u.id = j.owner_id",
    "SELECT * FROM jobs WHERE id IN (SELECT job_id FROM images)",
    "EXPLAIN SELECT * FROM jobs",
    "SELECT 1;",
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_on_both(dialect: str, sql: str) -> None:
    with pytest.raises(RefusedStatement):
        check_statement(sql, dialect)


@pytest.mark.parametrize("sql", list(PG_ONLY_REFUSED.values()), ids=list(PG_ONLY_REFUSED))
def test_refused_on_postgres(sql: str) -> None:
    with pytest.raises(RefusedStatement):
        check_statement(sql, "postgres", schema_name="public")


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(dialect: str, sql: str) -> None:
    checked = check_statement(sql, dialect)
    assert not checked.sql.endswith(";")
    assert checked.is_explain == sql.startswith("EXPLAIN")


def test_explain_forms_are_recognised() -> None:
    assert check_statement("EXPLAIN QUERY PLAN SELECT * FROM jobs", "sqlite").is_explain
    assert check_statement("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM jobs", "postgres").is_explain
    with pytest.raises(RefusedStatement):
        check_statement("EXPLAIN ANALYZE DELETE FROM jobs", "postgres")


def test_configured_schema_may_be_named_and_others_not() -> None:
    check_statement("SELECT id FROM t_abc.jobs", "postgres", schema_name="t_abc")
    with pytest.raises(RefusedStatement, match="own tables"):
        check_statement("SELECT id FROM public.jobs", "postgres", schema_name="t_abc")


def test_messages_say_what_to_do() -> None:
    with pytest.raises(RefusedStatement, match="list the columns"):
        check_statement("SELECT * FROM conversations", "postgres")
    with pytest.raises(RefusedStatement, match="one statement"):
        check_statement("SELECT 1; SELECT 2", "sqlite")
