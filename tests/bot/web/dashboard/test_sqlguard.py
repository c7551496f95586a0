"""The SQL console's parser gate, on both dialects: what it refuses and what it lets through."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp

from bot.web.dashboard.sqlguard import RefusedStatement, check_statement

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
    # the allow-list: subqueries under VALUES, correlated columns, renamed columns, …
    "hash under VALUES": "VALUES ((SELECT password_hash FROM admin_accounts LIMIT 1))",
    "token under VALUES": "VALUES (1), ((SELECT interaction_token FROM conversations LIMIT 1))",
    "renamed columns": "SELECT p FROM admin_accounts AS a(i, u, p)",
    "printf": "SELECT printf('%.*c', 20000000, 'x')",
    "repeat": "SELECT repeat('x', 20000000)",
    "qualified function": "SELECT pg_catalog.lower('x')",
    "parameter": "SELECT ?",
    "lateral": "SELECT * FROM jobs, LATERAL (SELECT 1) AS x",
    "unclosed quote": "SELECT 'abc",
    "unclosed comment": "SELECT 1 /* x",
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
    "replication slot": "SELECT pg_create_physical_replication_slot('x', true)",
    "drop slot": "SELECT pg_drop_replication_slot('x')",
    "stats reset": "SELECT pg_stat_reset()",
    "stats reset in WHERE": "SELECT id FROM jobs WHERE pg_stat_reset() IS NULL",
    "switch wal": "SELECT pg_switch_wal()",
    "restore point": "SELECT pg_create_restore_point('x')",
    "other sessions": "SELECT pg_stat_get_backend_activity(1)",
    "cast to regclass": "SELECT 'jobs'::regclass",
    "dollar parameter": "SELECT $1",
    "explain settings": "EXPLAIN (SETTINGS) SELECT 1",
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
# Queries the allow-list must keep accepting; what runs is their checked rendering.
RENDERED = [
    "VALUES ((SELECT max(id) FROM jobs)), (2)",
    "SELECT id FROM jobs UNION SELECT id FROM users ORDER BY id",
    "SELECT count(*) FILTER (WHERE status = 'failed') FROM jobs",
    "SELECT u.id, (SELECT max(created_at) FROM jobs AS j WHERE j.owner_id = u.id) FROM users AS u",
    "SELECT id, row_number() OVER (PARTITION BY kind ORDER BY created_at) FROM jobs",
    "SELECT coalesce(error, ''), upper(kind), length(queue), round(attempt / 2.0, 1) FROM jobs",
    "SELECT id AS password_hash FROM admin_accounts ORDER BY password_hash",
    "SELECT CAST(created_at AS DATE), count(*) FROM jobs GROUP BY 1",
]
DIALECT_ALLOWED = [
    ("sqlite", "SELECT json_extract(params, '$.prompt'), strftime('%Y', created_at) FROM jobs"),
    ("sqlite", "SELECT key, value FROM json_each('{\"a\": 1}')"),
    (
        "postgres",
        "SELECT params->>'prompt', date_trunc('day', created_at), extract(epoch FROM created_at) FROM jobs",
    ),
    ("postgres", "SELECT n FROM generate_series(1, 3) AS g(n)"),
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


def _every_column_bound(sql: str, dialect: str) -> bool:
    """True when every column in `sql` names its table (ORDER BY may name a result column)."""
    tree = sqlglot.parse_one(sql, dialect=dialect)
    return all(c.table or isinstance(c.parent, exp.Ordered) for c in tree.find_all(exp.Column))


@pytest.mark.parametrize(("dialect", "sql"), [(d, s) for d in DIALECTS for s in RENDERED] + DIALECT_ALLOWED)
def test_allowed_queries_run_as_checked(dialect: str, sql: str) -> None:
    checked = check_statement(sql, dialect, schema_name="public")
    assert _every_column_bound(checked.sql, dialect), checked.sql


def test_what_runs_is_the_checked_tree() -> None:
    """Every column bound to its table, `*` spelt out, comments gone."""
    checked = check_statement("SELECT id /* note */ FROM jobs -- done", "postgres")
    assert checked.sql == 'SELECT "jobs"."id" AS "id" FROM "jobs" AS "jobs"'
    assert check_statement("SELECT * FROM users", "sqlite").sql.startswith('SELECT "users"."id" AS "id", ')
    assert check_statement("VALUES (1)", "sqlite").sql == 'SELECT 1 AS "column1"'


def test_unreadable_sql_is_a_sentence() -> None:
    for sql in ("SELECT 'abc", "SELECT 1 /* x"):
        with pytest.raises(RefusedStatement, match="not closed"):
            check_statement(sql, "postgres")
    with pytest.raises(RefusedStatement, match=r"line 1, column \d+"):
        check_statement("SELECT (", "sqlite")


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
