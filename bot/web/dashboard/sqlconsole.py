"""The SQL console: one checked query on a separate read-only connection, bounded result.

Layers:
1. `sqlguard.check_statement` accepts only a query made of allowed parts over dreambot's
   tables, without secret columns, and returns the SQL to run (its own rendering).
2. SQLite: the file is opened `mode=ro` (the handle cannot write) and an authorizer
   allows only reads, denies PRAGMA, ATTACH and every write, refuses secret columns (it
   sees every column a query touches, `*` included) and allows only the functions the
   parser allows.
3. PostgreSQL: a fresh connection in a `READ ONLY` transaction that is always rolled
   back, `SET LOCAL statement_timeout`, the configured schema as search_path, and — once
   `dreambot up` has checked it (console_role.py) — a role that may only SELECT the
   non-secret columns.

Size: a value never reaches this process whole when it is long. SQLite refuses values
over SQLITE_MAX_VALUE bytes (its length limit) and the query is wrapped so each text
cell is cut to the cell limit inside the database; PostgreSQL cuts each non-numeric cell
with `left(…::text)` on the server and sends rows through a server-side cursor in small
batches. `sqlresult.collect` then bounds rows and the page in bytes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import make_url

from bot.web.dashboard.sqlallow import ALLOWED_NAMED, SECRET_COLUMNS, is_secret_table
from bot.web.dashboard.sqlguard import RefusedStatement, check_statement
from bot.web.dashboard.sqlresult import CELL_MAX_CHARS, MAX_COLUMNS, Limits, QueryResult, collect, to_csv
from core.settings import Settings

__all__ = ["QueryFailed", "QueryResult", "RefusedStatement", "console_url", "run_query", "to_csv"]

SQLITE_MAX_VALUE = 1_000_000  # bytes: SQLite refuses to make a longer string or blob
# PostgreSQL types whose values are short by nature; everything else is cut as text.
PG_SHORT_TYPES = frozenset({16, 20, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950})
PG_BYTEA = 17


class QueryFailed(Exception):
    """The statement was allowed but did not finish: timeout, refused by the database, …"""


def console_url(settings: Settings) -> str:
    return settings.console_database_url or settings.resolved_database_url


def run_query(
    settings: Settings, sql: str, *, row_limit: int | None = None, time_limit: float | None = None
) -> QueryResult:
    """Check and run one statement; raise `RefusedStatement` or `QueryFailed`."""
    url = console_url(settings)
    dialect = "sqlite" if url.startswith("sqlite") else "postgres"
    checked = check_statement(sql, dialect, schema_name=settings.database_schema)
    bounds: dict[str, Any] = {
        "row_limit": row_limit or settings.console_row_limit,
        "time_limit": time_limit or settings.console_time_limit,
        "page_bytes": settings.console_byte_limit,
        "headers": checked.headers,
    }
    if dialect == "sqlite":
        return run_sqlite(Path(make_url(url).database or ""), checked.sql, **bounds)
    return run_postgres(url, checked.sql, schema=settings.database_schema, **bounds)


def _is_query(sql: str) -> bool:
    """A query the size wrapper can enclose (EXPLAIN and, in tests, anything else run as is)."""
    return sql.lstrip()[:6].upper().startswith(("SELECT", "WITH", "(", "VALUES"))


def _names(described: Sequence[str], headers: Sequence[str | None]) -> list[str]:
    padded = [*headers, *[None] * len(described)]  # a header for each column, or none
    return [header or name for name, header in zip(described, padded[: len(described)], strict=True)]


def _too_many_columns(count: int) -> QueryFailed:
    return QueryFailed(f"The result has {count} columns; the console shows at most {MAX_COLUMNS}.")


# -- SQLite ---------------------------------------------------------------------------

_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE}
# Functions SQLite calls by name: the parser's named list plus the built-ins sqlglot
# renders its known functions as (count, substr, …) and those of the size wrapper.
_SQLITE_FUNCTIONS = ALLOWED_NAMED["sqlite"] | {
    "count", "sum", "avg", "min", "max", "group_concat", "coalesce", "nullif", "ifnull", "iif",
    "abs", "round", "ceil", "ceiling", "floor", "sqrt", "ln", "log", "log10", "exp", "pow", "power",
    "sign", "trunc", "pi", "random", "mod", "length", "lower", "upper", "trim", "ltrim", "rtrim",
    "substr", "substring", "replace", "instr", "hex", "unicode", "char", "typeof", "like", "glob",
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value", "json_extract", "->", "->>",
    "date", "time", "datetime", "julianday", "strftime", "unixepoch", "concat", "concat_ws",
    "greatest", "least", "stddev", "variance", "generate_series", "json_each", "json_tree",
}  # fmt: skip


def sqlite_authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
) -> int:
    """Allow reads of non-secret data and allowed functions; deny everything else."""
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ:
        table, column = (arg1 or "").lower(), (arg2 or "").lower()
        if is_secret_table(table) or (table, column) in SECRET_COLUMNS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_OK if (arg2 or "").lower() in _SQLITE_FUNCTIONS else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY  # writes, PRAGMA, ATTACH, DETACH, transactions, DDL, …


def open_sqlite_readonly(path: Path) -> sqlite3.Connection:
    """A read-only handle on the database file, with the console's authorizer and limits."""
    if not path.is_file():
        raise QueryFailed(f"The database file {path} does not exist.")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=5)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQLITE_MAX_VALUE)
    conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_COLUMNS)
    conn.set_authorizer(sqlite_authorizer)
    return conn


def _sqlite_wrapped(sql: str, count: int) -> str:
    cells = ", ".join(
        f"CASE typeof(c{i}) WHEN 'text' THEN substr(c{i}, 1, {CELL_MAX_CHARS + 1}) "
        f"WHEN 'blob' THEN '<' || length(c{i}) || ' bytes>' ELSE c{i} END"
        for i in range(count)
    )
    columns = ", ".join(f"c{i}" for i in range(count))
    return f"WITH _console({columns}) AS (\n{sql}\n) SELECT {cells} FROM _console"


def run_sqlite(
    path: Path,
    sql: str,
    *,
    row_limit: int,
    time_limit: float,
    page_bytes: int = 2_000_000,
    headers: Sequence[str | None] = (),
) -> QueryResult:
    """Run `sql` (already checked, or deliberately not, in tests) on a read-only handle."""
    started = time.monotonic()
    deadline = started + time_limit
    conn = open_sqlite_readonly(path)
    # Called every N virtual-machine steps; a non-zero return interrupts the statement.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    limits = Limits(row_limit, time_limit, page_bytes)
    try:
        if _is_query(sql):
            described = [d[0] for d in conn.execute(f"SELECT * FROM (\n{sql}\n) LIMIT 0").description or []]
            cursor = conn.execute(_sqlite_wrapped(sql, len(described)))
        else:
            cursor = conn.execute(sql)
            described = [d[0] for d in cursor.description or []]
        return collect(_names(described, headers), cursor.fetchmany, limits, started)
    except sqlite3.DatabaseError as exc:
        raise QueryFailed(_sqlite_message(exc, time_limit)) from None
    except sqlite3.Warning as exc:  # "You can only execute one statement at a time."
        raise QueryFailed(f"The database said: {exc}") from None
    finally:
        conn.close()


def _sqlite_message(exc: sqlite3.DatabaseError, time_limit: float) -> str:
    text = str(exc)
    if "interrupted" in text:
        return _timeout_message(time_limit)
    if "too big" in text:
        return (
            f"A value in this result would be over {SQLITE_MAX_VALUE // 1_000_000} MB, more than the console "
            "computes; cut it with substr() or aggregate fewer rows."
        )
    if "too many columns" in text:
        return f"The result has too many columns; the console shows at most {MAX_COLUMNS}."
    if "not authorized" in text or "prohibited" in text:
        return f"The database refused: the console is read-only and secret columns are hidden ({text})."
    return f"The database said: {text}"


# -- PostgreSQL -------------------------------------------------------------------------


def conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_cell(i: int, type_code: int) -> str:
    if type_code in PG_SHORT_TYPES:
        return f"c{i}"
    if type_code == PG_BYTEA:
        return f"'<' || octet_length(c{i}) || ' bytes>'"
    return f"left(c{i}::text, {CELL_MAX_CHARS + 1})"


def _pg_wrapped(sql: str, types: Sequence[int]) -> str:
    columns = ", ".join(f"c{i}" for i in range(len(types)))
    cells = ", ".join(_pg_cell(i, t) for i, t in enumerate(types))
    return f"WITH _console({columns}) AS (\n{sql}\n) SELECT {cells} FROM _console"


def run_postgres(
    url: str,
    sql: str,
    *,
    schema: str | None,
    row_limit: int,
    time_limit: float,
    page_bytes: int = 2_000_000,
    headers: Sequence[str | None] = (),
) -> QueryResult:
    import psycopg

    started = time.monotonic()
    extra: dict[str, Any] = {"options": f"-csearch_path={schema}"} if schema else {}
    try:
        conn = psycopg.connect(conninfo(url), connect_timeout=5, **extra)
    except psycopg.Error as exc:
        raise QueryFailed(f"Could not connect to the database: {exc}") from None
    conn.read_only = True  # psycopg opens every transaction with BEGIN READ ONLY
    limits = Limits(row_limit, time_limit, page_bytes)
    try:
        with conn.cursor() as setup:
            setup.execute(f"SET LOCAL statement_timeout = {max(1, int(time_limit * 1000))}")
            setup.execute("SET LOCAL idle_in_transaction_session_timeout = 60000")
        if _is_query(sql):
            # DECLARE plans the query and describes its columns without running it.
            with conn.cursor(name="dreambot_console_describe") as probe:
                probe.execute(sql)
                described = list(probe.description or [])
            if len(described) > MAX_COLUMNS:
                raise _too_many_columns(len(described))
            # A server-side cursor: rows come in as fetched, each long cell already cut.
            cursor: Any = conn.cursor(name="dreambot_console")
            cursor.execute(_pg_wrapped(sql, [d.type_code for d in described]))
        else:
            cursor = conn.cursor()
            cursor.execute(sql, prepare=True)  # a prepared statement holds one command only
            described = list(cursor.description or [])
        return collect(_names([d.name for d in described], headers), cursor.fetchmany, limits, started)
    except psycopg.errors.QueryCanceled:
        raise QueryFailed(_timeout_message(time_limit)) from None
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        raise QueryFailed(f"The database said: {message}") from None
    finally:
        conn.rollback()
        conn.close()


def _timeout_message(seconds: float) -> str:
    return f"Stopped: the query ran longer than the {seconds:g} s limit."
