"""The SQL console: one read-only statement on a separate read-only connection.

Layers, each enough on its own to stop a write:
1. `sqlguard.check_statement` refuses anything but one safe SELECT/WITH/EXPLAIN.
2. SQLite: the file is opened `mode=ro` (the OS-level handle cannot write) and an
   authorizer allows only reads, denies PRAGMA, ATTACH and every write, and refuses
   secret tables and columns — it sees every column a query touches, `*` included.
3. PostgreSQL: a fresh connection in a `READ ONLY` transaction that is always rolled
   back, `SET LOCAL statement_timeout`, the configured schema as search_path, the
   statement sent as a prepared statement (the server refuses two commands in one),
   and in production a read-only role (docs/dashboard.md, `DREAMBOT_CONSOLE_DATABASE_URL`).

Rows are fetched up to the row limit plus one, so a huge result is never loaded; the
extra row only says "truncated". The time limit is a SQLite progress handler and
PostgreSQL's statement_timeout.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url

from bot.dashboard.sqlguard import (
    DENIED_FUNCTION_PREFIXES,
    SECRET_COLUMNS,
    RefusedStatement,
    check_statement,
    is_secret_table,
)
from core.settings import Settings

__all__ = ["QueryFailed", "QueryResult", "RefusedStatement", "run_query", "to_csv"]


class QueryFailed(Exception):
    """The statement was allowed but did not finish: timeout, refused by the database, …"""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    row_limit: int
    elapsed_ms: float


def run_query(
    settings: Settings, sql: str, *, row_limit: int | None = None, time_limit: float | None = None
) -> QueryResult:
    """Check and run one statement; raise `RefusedStatement` or `QueryFailed`."""
    limit = row_limit or settings.console_row_limit
    seconds = time_limit or settings.console_time_limit
    url = settings.console_database_url or settings.resolved_database_url
    if url.startswith("sqlite"):
        checked = check_statement(sql, "sqlite")
        database = make_url(url).database or ""
        return run_sqlite(Path(database), checked.sql, row_limit=limit, time_limit=seconds)
    checked = check_statement(sql, "postgres", schema_name=settings.database_schema)
    return run_postgres(
        url, checked.sql, schema=settings.database_schema, row_limit=limit, time_limit=seconds
    )


# -- SQLite ---------------------------------------------------------------------------

_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE}


def sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
) -> int:
    """Allow reads of non-secret data and harmless functions; deny everything else."""
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ:
        table, column = (arg1 or "").lower(), (arg2 or "").lower()
        if is_secret_table(table) or (table, column) in SECRET_COLUMNS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        return sqlite3.SQLITE_DENY if name.startswith(DENIED_FUNCTION_PREFIXES) else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY  # writes, PRAGMA, ATTACH, DETACH, transactions, DDL, …


def open_sqlite_readonly(path: Path) -> sqlite3.Connection:
    """A read-only handle on the database file, with the console's authorizer installed."""
    if not path.is_file():
        raise QueryFailed(f"The database file {path} does not exist.")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=5)
    conn.set_authorizer(sqlite_authorizer)
    return conn


def run_sqlite(path: Path, sql: str, *, row_limit: int, time_limit: float) -> QueryResult:
    """Run `sql` (already checked, or deliberately not, in tests) on a read-only handle."""
    started = time.monotonic()
    deadline = started + time_limit
    conn = open_sqlite_readonly(path)
    # Called every N virtual-machine steps; a non-zero return interrupts the statement.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql)
        return _collect(cursor.description, cursor.fetchmany, row_limit, started)
    except sqlite3.DatabaseError as exc:
        if "interrupted" in str(exc):
            raise QueryFailed(_timeout_message(time_limit)) from None
        if "not authorized" in str(exc) or "prohibited" in str(exc):
            raise QueryFailed(
                f"The database refused: the console is read-only and secret columns are hidden ({exc})."
            ) from None
        raise QueryFailed(f"The database said: {exc}") from None
    except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
        raise QueryFailed(f"The database said: {exc}") from None
    finally:
        conn.close()


# -- PostgreSQL -------------------------------------------------------------------------


def _conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def run_postgres(url: str, sql: str, *, schema: str | None, row_limit: int, time_limit: float) -> QueryResult:
    import psycopg

    started = time.monotonic()
    extra = {"options": f"-csearch_path={schema}"} if schema else {}
    try:
        conn = psycopg.connect(_conninfo(url), connect_timeout=5, **extra)
    except psycopg.Error as exc:
        raise QueryFailed(f"Could not connect to the database: {exc}") from None
    conn.read_only = True  # psycopg opens every transaction with BEGIN READ ONLY
    try:
        with conn.cursor() as setup:
            setup.execute(f"SET LOCAL statement_timeout = {max(1, int(time_limit * 1000))}")
            setup.execute("SET LOCAL idle_in_transaction_session_timeout = 60000")
        is_query = not sql.lstrip()[:7].upper().startswith("EXPLAIN")
        if is_query:
            # A server-side cursor: rows come in as fetched, never the whole result.
            cursor = conn.cursor(name="dreambot_console")
            cursor.execute(sql)
        else:
            cursor = conn.cursor()
            cursor.execute(sql, prepare=True)  # a prepared statement holds one command only
        return _collect(cursor.description, cursor.fetchmany, row_limit, started)
    except psycopg.errors.QueryCanceled:
        raise QueryFailed(_timeout_message(time_limit)) from None
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise QueryFailed(f"The database said: {message}") from None
    finally:
        conn.rollback()
        conn.close()


# -- shared -----------------------------------------------------------------------------


def _timeout_message(seconds: float) -> str:
    return f"Stopped: the query ran longer than the {seconds:g} s limit."


def _collect(
    description: Any, fetchmany: Callable[[int], list[Any]], row_limit: int, started: float
) -> QueryResult:
    columns = [d[0] for d in description or []]
    rows = fetchmany(row_limit + 1) if description else []
    truncated = len(rows) > row_limit
    return QueryResult(
        columns=columns,
        rows=[[display_value(v) for v in row] for row in rows[:row_limit]],
        truncated=truncated,
        row_limit=row_limit,
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )


def display_value(value: Any) -> Any:
    """A value as the page and CSV show it (JSON-friendly)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value) if value == value.to_integral_value() or abs(value) < 1e15 else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return str(value)


def to_csv(result: QueryResult) -> str:
    """The rows as CSV. Text that a spreadsheet would run as a formula is quoted with '."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow([_csv_cell(v) for v in row])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
