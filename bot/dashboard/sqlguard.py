"""The SQL console's first gate: parse the text and refuse anything but one safe read.

This is a *parser* check (sqlglot), done before the database sees anything. It is not
the only line of defence: the statement then runs on a read-only connection (SQLite
`mode=ro` plus an authorizer; PostgreSQL `READ ONLY` transaction, ideally as a
read-only role, see docs/dashboard.md), so a statement that slips past the parser still
cannot write.

What it refuses, with a message an admin understands:
- anything but exactly one statement;
- anything but SELECT / WITH … SELECT / VALUES, or EXPLAIN of one; a write hidden in a
  CTE (`WITH d AS (DELETE …) SELECT …`), `SELECT … INTO`, `FOR UPDATE`;
- tables that are not dreambot's own (system catalogues such as `pg_authid` or
  `pg_stats` hold password hashes and sample values) or that hold secrets;
- secret columns (`admin_accounts.password_hash`, `conversations.interaction_token`),
  also through `*`, `t.*` or a whole-row reference such as `to_jsonb(c)`;
- functions that read files, run a query given as text (`query_to_xml`), reach other
  servers, or touch server settings and other sessions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from core.models import Base

# Secret columns: readable by the application, never from the console.
SECRET_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("admin_accounts", "password_hash"), ("conversations", "interaction_token")}
)
# Whole tables that are secret: any table named like a session store (none today; a
# future `web_sessions` table is covered without touching this list).
SECRET_TABLE_PATTERN = re.compile(r"session", re.IGNORECASE)

# Table-valued functions allowed in FROM (handy for date series and JSON arrays).
TABLE_FUNCTIONS = frozenset(
    {
        "generate_series",
        "unnest",
        "json_each",
        "json_tree",
        "jsonb_each",
        "json_array_elements",
        "jsonb_array_elements",
        "json_each_text",
        "jsonb_each_text",
        "jsonb_array_elements_text",
        "json_array_elements_text",
    }
)
# Function names (lower case) or prefixes never allowed: file access, queries given as
# text, other servers, server settings, other sessions, large objects, extensions.
DENIED_FUNCTION_PREFIXES = (
    "query_to_",
    "cursor_to_",
    "table_to_",
    "schema_to_",
    "database_to_",
    "dblink",
    "pg_read",
    "pg_ls_",
    "pg_stat_file",
    "pg_file",
    "pg_terminate",
    "pg_cancel",
    "pg_reload",
    "pg_rotate",
    "pg_promote",
    "pg_logical",
    "pg_replication",
    "pg_advisory",
    "pg_notify",
    "lo_",
    "set_config",
    "current_setting",
    "load_extension",
    "readfile",
    "writefile",
    "fts3_tokenizer",
    "txid_",
    "nextval",
    "setval",
)
DENIED_NODES: tuple[type[exp.Expression], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Command,
    exp.Set,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Copy,
    exp.Into,
    exp.Lock,
    exp.Use,
    exp.TruncateTable,
)
EXPLAIN = re.compile(
    r"^\s*EXPLAIN\b(?:\s+QUERY\s+PLAN\b|\s+ANALY[SZ]E\b|\s+VERBOSE\b|\s*\([^()]*\))*\s*", re.IGNORECASE
)


class RefusedStatement(Exception):
    """The console will not run this statement; the message says why, for the admin."""


@dataclass(frozen=True)
class CheckedStatement:
    sql: str  # the admin's text, trimmed, without a trailing semicolon
    is_explain: bool


@lru_cache(maxsize=1)
def app_schema() -> dict[str, dict[str, str]]:
    """dreambot's tables and their columns (from the models: the same on both databases)."""
    return {
        table.name: {column.name: "TEXT" for column in table.columns} for table in Base.metadata.sorted_tables
    }


def is_secret_table(name: str) -> bool:
    return bool(SECRET_TABLE_PATTERN.search(name))


def _secret_holding(name: str) -> bool:
    return any(table == name for table, _ in SECRET_COLUMNS)


def check_statement(sql: str, dialect: str, *, schema_name: str | None = None) -> CheckedStatement:
    """Return the statement to run, or raise `RefusedStatement`. `dialect`: sqlite|postgres."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise RefusedStatement("Type one SELECT statement to run.")
    match = EXPLAIN.match(text)
    body = text[match.end() :] if match else text
    try:
        statements = [s for s in sqlglot.parse(body, dialect=dialect) if s is not None]
    except ParseError as exc:
        first = str(exc).splitlines()[0]
        raise RefusedStatement(f"Could not read that SQL: {first}") from None
    if len(statements) != 1:
        raise RefusedStatement("Run one statement at a time (found several separated by ';').")
    tree = statements[0]
    if not isinstance(tree, exp.Query | exp.Values):
        raise RefusedStatement(
            f"Only SELECT, WITH … SELECT and EXPLAIN are allowed here, not {tree.key.upper()}."
        )
    for node in tree.walk():
        if isinstance(node, DENIED_NODES):
            raise RefusedStatement(
                f"The console is read-only: {node.key.upper()} is not allowed inside a query."
            )
    _check_functions(tree)
    _check_tables_and_columns(tree, dialect, schema_name)
    return CheckedStatement(sql=text, is_explain=match is not None)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    # sqlglot's own name for PostgreSQL's set-returning generate_series
    return node.sql_name().lower().removeprefix("exploding_")


def _check_functions(tree: exp.Expression) -> None:
    for node in tree.find_all(exp.Func):
        name = _function_name(node)
        if name.startswith(DENIED_FUNCTION_PREFIXES):
            raise RefusedStatement(f"The function {name}() is not available in the console.")


def _check_tables_and_columns(tree: exp.Expression, dialect: str, schema_name: str | None) -> None:
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    known = app_schema()
    allowed_schemas = {"", "main"} if dialect == "sqlite" else {"", schema_name or "public"}
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            name = _function_name(table.this)
            if name not in TABLE_FUNCTIONS:
                raise RefusedStatement(f"The table function {name}() is not available in the console.")
            continue
        name = table.name.lower()
        if table.catalog or table.db.lower() not in allowed_schemas:
            raise RefusedStatement(f"Only dreambot's own tables can be queried, not {table.sql(dialect)}.")
        if not table.db and name in cte_names:
            continue
        if is_secret_table(name):
            raise RefusedStatement(f"The table {name} holds secrets and can't be read from the console.")
        if name not in known:
            raise RefusedStatement(
                f"There is no dreambot table named {name} (system tables are not available here)."
            )
    try:
        qualified = qualify(
            tree.copy(),
            schema={name: cols for name, cols in known.items() if not is_secret_table(name)},
            dialect=dialect,
            validate_qualify_columns=True,
            expand_stars=True,
            quote_identifiers=False,
        )
    except OptimizeError as exc:
        raise RefusedStatement(f"Could not check that query: {exc}") from None
    for scope in traverse_scope(qualified):
        _check_scope(scope)


def _table_of(scope: Scope, alias: str) -> str | None:
    source = scope.sources.get(alias)
    if isinstance(source, exp.Table) and not isinstance(source.this, exp.Func):
        return source.name.lower()
    return None


def _check_scope(scope: Scope) -> None:
    secret_aliases = {
        alias for alias in scope.sources if (t := _table_of(scope, alias)) and _secret_holding(t)
    }
    for column in scope.columns:
        table = _table_of(scope, column.table)
        if table and (table, column.name.lower()) in SECRET_COLUMNS:
            raise RefusedStatement(
                f"{table}.{column.name} holds a secret and can't be read from the console"
                " (if you used *, list the columns you need instead)."
            )
    for star in scope.stars:
        owner = star.table if isinstance(star, exp.Column) else ""
        if (owner and owner in secret_aliases) or (not owner and secret_aliases):
            raise RefusedStatement("A table with secret columns can't be read with *; list the columns.")
    # A bare table alias used as a value (`to_jsonb(c)`, `SELECT c FROM conversations c`)
    # is the whole row, secrets included.
    # sqlglot marks those as `TableColumn` once qualified.
    for column in scope.expression.find_all(exp.TableColumn, exp.Column):
        if (isinstance(column, exp.TableColumn) or not column.table) and column.name in secret_aliases:
            raise RefusedStatement(
                f"{column.name} stands for a whole row with secret columns; list the columns you need."
            )
