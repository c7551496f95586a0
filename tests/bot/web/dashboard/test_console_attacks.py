"""The SQL console against someone with an admin login, through the real forms: no secret in
any page or CSV, no change to the server, no configuration or other session shown, and a
sentence plus an audit row for every refusal — also for SQL that does not parse.

Each test runs three times (`console_db`): SQLite, PostgreSQL as the main superuser (the
parser is the only thing between the console and the secrets) and PostgreSQL as the
read-only role `dreambot admin console-role` makes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from html import unescape

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from bot.web.app import create_app
from bot.web.dashboard.auth import create_admin
from core.db import session_scope
from core.models import AdminAccount, AuditLog
from core.settings import Settings
from tests.bot.web.dashboard.seed import ADMIN, PASSWORD, SECRET_TOKEN, login, seed
from tests.helpers.profile import PG_URL

SECRET_READS = [
    # finding 1: subqueries under VALUES, string_agg / group_concat into the CSV
    "VALUES ((SELECT password_hash FROM admin_accounts LIMIT 1))",
    "VALUES ((SELECT interaction_token FROM conversations LIMIT 1))",
    "VALUES (1), ((SELECT max(password_hash) FROM admin_accounts))",
    "SELECT * FROM (VALUES ((SELECT password_hash FROM admin_accounts))) AS v",
    "SELECT string_agg(username || ':' || password_hash, ',') FROM admin_accounts",
    "SELECT group_concat(username || ':' || password_hash, ',') FROM admin_accounts",
    # CTEs, set operations, correlated and scalar subqueries
    "WITH c AS (SELECT * FROM conversations) SELECT * FROM c",
    "WITH h AS (SELECT password_hash AS x FROM admin_accounts) SELECT x FROM h",
    "WITH RECURSIVE r(x) AS (SELECT password_hash FROM admin_accounts UNION SELECT x FROM r) SELECT x FROM r",
    "SELECT username FROM admin_accounts UNION ALL SELECT password_hash FROM admin_accounts",
    "SELECT CAST(id AS TEXT) FROM jobs UNION SELECT interaction_token FROM conversations",
    "SELECT a.id, (SELECT a.password_hash) FROM admin_accounts AS a",
    "SELECT (SELECT max(password_hash) FROM admin_accounts)",
    "SELECT id FROM jobs WHERE EXISTS (SELECT 1 FROM conversations WHERE interaction_token LIKE 'i%')",
    "SELECT first_value(password_hash) OVER () FROM admin_accounts",
    "SELECT 1 AS password_hash FROM admin_accounts GROUP BY password_hash HAVING max(password_hash) > ''",
    # whole rows, row values, renamed columns, casts, JSON builders
    "SELECT t FROM admin_accounts t",
    "SELECT c FROM conversations AS c",
    "SELECT to_jsonb(t) FROM admin_accounts t",
    "SELECT row_to_json(c) FROM conversations c",
    "SELECT to_json(c.*) FROM conversations c",
    "SELECT json_agg(a) FROM admin_accounts a",
    "SELECT (a).password_hash FROM admin_accounts a",
    "SELECT a::text FROM admin_accounts a",
    "SELECT CAST(a AS TEXT) FROM admin_accounts AS a",
    "SELECT ROW(a.*)::text FROM admin_accounts a",
    "SELECT p FROM admin_accounts AS a(i, u, p)",
    "SELECT CAST(password_hash AS TEXT) FROM admin_accounts",
    "SELECT jsonb_build_object('h', password_hash) FROM admin_accounts",
    "SELECT json_object('h', password_hash) FROM admin_accounts",
    "SELECT json_extract(json_object('t', interaction_token), '$.t') FROM conversations",
    "SELECT * FROM conversations NATURAL JOIN admin_accounts",
    "SELECT * FROM admin_accounts",
    "SELECT a.* FROM admin_accounts AS a",
    "TABLE admin_accounts",
    'SELECT "password_hash" FROM "admin_accounts"',
    "SELECT PASSWORD_HASH FROM ADMIN_ACCOUNTS",
    "SELECT username FROM admin_accounts ORDER BY password_hash",
    "SELECT E'\\'' , password_hash FROM admin_accounts --'",
    "SELECT $$x$$, password_hash FROM admin_accounts",
    # other ways to a query given as text, files, other servers, catalogues
    "SELECT query_to_xml('SELECT password_hash FROM admin_accounts', true, true, '')",
    "SELECT * FROM dblink('', 'SELECT password_hash FROM admin_accounts') AS t(h text)",
    "SELECT rolpassword FROM pg_authid",
    "SELECT * FROM pg_catalog.pg_stats",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT lo_get(1)",
    "SELECT sql FROM sqlite_master",
    "SELECT * FROM pragma_table_info('admin_accounts')",
    "SELECT load_extension('x')",
]
# Text a database may read otherwise than a parser: whatever the console makes of it, what
# runs is its own rendering of what it checked (here: `SELECT 1`, or a refusal).
READ_OTHERWISE = [
    "SELECT 1 /* /* */ , password_hash FROM admin_accounts -- */",
    "SELECT 1 /* x */ /* , password_hash FROM admin_accounts */",
    "SELECT 1 -- \n, password_hash FROM admin_accounts",
]
PLAIN_READS = [
    ("VALUES ((SELECT count(*) FROM conversations))", "<td>1</td>"),
    ("SELECT username FROM admin_accounts UNION SELECT display_name FROM users ORDER BY 1", "<td>Ann</td>"),
    ("WITH c AS (SELECT id, channel_id FROM conversations) SELECT channel_id FROM c", "<td>c1</td>"),
    ("SELECT a.username, (SELECT count(*) FROM jobs) AS jobs FROM admin_accounts AS a", "<td>root</td>"),
]
UNREADABLE = ["SELECT 'abc", "SELECT 1 /* x", 'SELECT "abc', "SELECT $$abc", "SELECT (", "SELECT 1; SELECT"]


@pytest.fixture
def admin_client(console_db: Settings) -> Iterator[tuple[TestClient, str]]:
    create_admin(console_db, ADMIN, PASSWORD)
    seed(console_db)
    with TestClient(create_app(console_db), base_url="http://testserver") as client:
        yield client, login(client)


def _flash(html: str) -> str:
    match = re.search(r'data-testid="error">([^<]*)<', html)
    return unescape(match.group(1)) if match else ""


def _audit_actions(settings: Settings) -> list[str]:
    with session_scope(settings) as session:
        return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


def _secrets(settings: Settings) -> list[str]:
    with session_scope(settings) as session:
        password_hash = session.scalar(
            select(AdminAccount.password_hash).where(AdminAccount.username == ADMIN)
        )
    assert password_hash and password_hash.startswith("$argon2")
    return [password_hash, password_hash.split("$")[-1], SECRET_TOKEN, "$argon2"]


def _answers(client: TestClient, token: str, sql: str, *, refused: bool = True) -> list[str]:
    """POST the statement to the page and the CSV export; return the two bodies. Each
    answer is a page, never an error page; a refusal (400) says why in a sentence."""
    bodies = []
    for path in ("/admin/sql", "/admin/sql/csv"):
        response = client.post(path, data={"csrf_token": token, "sql": sql})
        assert response.status_code in ((400,) if refused else (200, 400)), (sql, path, response.status_code)
        if response.status_code == 400:
            sentence = _flash(response.text)
            assert len(sentence) > 10 and sentence[-1] in ".)", (sql, sentence)
        bodies.append(response.text)
    return bodies


def test_no_secret_in_any_page_or_csv(console_db: Settings, admin_client: tuple[TestClient, str]) -> None:
    client, token = admin_client
    secrets = _secrets(console_db)
    before = len(_audit_actions(console_db))
    for sql in SECRET_READS + READ_OTHERWISE:
        for body in _answers(client, token, sql, refused=sql in SECRET_READS):
            leaked = [s for s in secrets if s in body]
            assert not leaked, f"{sql!r} showed a secret"
    actions = _audit_actions(console_db)[before:]
    assert actions[: 2 * len(SECRET_READS)] == ["sql.run.refused", "sql.export.refused"] * len(SECRET_READS)
    assert len(actions) == 2 * len(SECRET_READS + READ_OTHERWISE)  # one audit row per request
    # …while what may be read still reads, through the same forms.
    for sql, expected in PLAIN_READS:
        page = client.post("/admin/sql", data={"csrf_token": token, "sql": sql})
        assert page.status_code == 200 and expected in page.text, (sql, _flash(page.text))
        csv = client.post("/admin/sql/csv", data={"csrf_token": token, "sql": sql})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")


def test_unreadable_sql_is_a_sentence_and_an_audit_row(
    console_db: Settings, admin_client: tuple[TestClient, str]
) -> None:
    client, token = admin_client
    before = len(_audit_actions(console_db))
    for sql in UNREADABLE:
        _answers(client, token, sql)
    page = client.post("/admin/sql", data={"csrf_token": token, "sql": "SELECT 'abc"})
    assert "not closed" in _flash(page.text)
    actions = _audit_actions(console_db)[before:]
    assert actions == ["sql.run.refused", "sql.export.refused"] * len(UNREADABLE) + ["sql.run.refused"]


# -- PostgreSQL: server functions -----------------------------------------------------------

SERVER_CALLS = [
    "SELECT pg_create_physical_replication_slot('{slot}', true)",
    "SELECT * FROM pg_create_physical_replication_slot('{slot}', true)",
    "VALUES ((SELECT slot_name FROM pg_create_physical_replication_slot('{slot}', true)))",
    "SELECT pg_create_logical_replication_slot('{slot}', 'test_decoding')",
    "SELECT pg_drop_replication_slot('{keep}')",
    "SELECT pg_stat_reset()",
    "SELECT pg_catalog.pg_stat_reset()",
    "SELECT 1 FROM jobs WHERE pg_stat_reset() IS NULL",
    "WITH x AS (SELECT pg_stat_reset_shared('bgwriter')) SELECT 1 FROM x",
    "SELECT pg_switch_wal()",
    "SELECT pg_create_restore_point('{slot}')",
    "SELECT id FROM jobs UNION SELECT pg_create_restore_point('{slot}')::text",
    "SELECT pg_advisory_lock(4242)",
    "SELECT pg_try_advisory_xact_lock(4242)",
    "SELECT pg_show_all_settings()",
    "SELECT * FROM pg_show_all_settings()",
    "SELECT * FROM pg_show_all_file_settings()",
    "SELECT * FROM pg_hba_file_rules()",
    "SELECT pg_stat_get_backend_activity(n) FROM generate_series(1, 100) AS s(n)",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT query FROM pg_stat_activity",
    "SELECT current_setting('data_directory')",
    "SELECT setting FROM pg_settings",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT pg_read_file('postgresql.auto.conf')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT lo_import('/etc/hostname')",
    "SELECT pg_terminate_backend(1)",
    "SELECT pg_reload_conf()",
    "SELECT txid_current()",
    "SELECT nextval('jobs_id_seq')",
    "SELECT version()",
    "EXPLAIN (SETTINGS) SELECT 1",
    "EXPLAIN ANALYZE SELECT pg_stat_reset()",
]


@pytest.fixture
def pg_server() -> Iterator[dict[str, str]]:
    """A replication slot that must survive, a side session with a marked statement, and
    the names the console must not create; cleaned up whatever happens."""
    names = {"slot": f"evil_{uuid.uuid4().hex[:10]}", "keep": f"keep_{uuid.uuid4().hex[:10]}"}
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    side = engine.connect()
    marker = f"side-session-{uuid.uuid4().hex}"
    side.execute(text(f"SELECT '{marker}'"))  # left as this session's last statement
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_create_physical_replication_slot(:n)"), {"n": names["keep"]})
    try:
        yield names | {"marker": marker}
    finally:
        side.close()
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN (:a, :b)"
                ),
                {"a": names["slot"], "b": names["keep"]},
            )
        engine.dispose()


def _server_state(prefixes: tuple[str, ...]) -> dict[str, object]:
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        slots = sorted(
            r
            for (r,) in conn.execute(text("SELECT slot_name FROM pg_replication_slots"))
            if r.startswith(prefixes)
        )
        state = {
            "slots": slots,
            "db_stats_reset": conn.scalar(
                text("SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()")
            ),
            "bgwriter_stats_reset": conn.scalar(text("SELECT stats_reset FROM pg_stat_bgwriter")),
            "advisory_locks": conn.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242")
            ),
        }
        state["config"] = [
            conn.scalar(text(f"SELECT current_setting('{name}')"))
            for name in ("data_directory", "hba_file", "config_file")
        ]
    engine.dispose()
    return state


@pytest.mark.parametrize("console_db", ["postgres-main", "postgres-role"], indirect=True)
def test_server_functions_refused_and_server_unchanged(
    console_db: Settings, admin_client: tuple[TestClient, str], pg_server: dict[str, str]
) -> None:
    client, token = admin_client
    prefixes = (pg_server["slot"], pg_server["keep"])
    before = _server_state(prefixes)
    assert before["slots"] == [pg_server["keep"]]
    shown = []
    for template in SERVER_CALLS:
        shown += _answers(client, token, template.format(**pg_server))
    after = _server_state(prefixes)
    assert after == before  # no new or dropped slot, statistics not reset, no lock held
    config = [value for value in before["config"] if value]  # type: ignore[union-attr]
    for body in shown:
        assert pg_server["marker"] not in body  # no other session's statement
        assert not [value for value in config if value in body]  # no configuration
