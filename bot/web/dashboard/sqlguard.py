"""The SQL console's first gate: accept one query made only of allowed parts, or say why not.

An allow-list check (sqlglot), done before the database sees anything:
- the text parses (an unclosed quote or comment is a sentence, never an error page) into
  exactly one query: SELECT, WITH … SELECT, VALUES, set operations, or EXPLAIN of one;
- `VALUES` rows become `SELECT … UNION ALL SELECT …`, so their subqueries are checked
  like any other;
- every node is a kind listed in `sqlallow` (query structure, operators, literals, casts
  to plain types, pure functions); anything else is refused without being named;
- after sqlglot qualifies the tree (every column bound to its table, `*` expanded from
  dreambot's own schema), every table is one of dreambot's tables or an allowed table
  function, every column — in every scope, also correlated ones — is bound to a source
  and is not a secret, no whole row (`t`, `to_jsonb(t)`) and no `t.*` is left, and no
  column or table escaped the scope walk.

What runs is sqlglot's rendering of the checked tree (every column written as
"table"."column"), not the admin's text, so the database cannot read the text otherwise
than the check did. The connection it runs on is the second layer (see sqlconsole.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache, reduce

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError, TokenError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from bot.web.dashboard.sqlallow import (
    ALLOWED_CASTS,
    ALLOWED_NODES,
    SECRET_COLUMNS,
    TABLE_FUNCTIONS,
    function_name,
    is_allowed_function,
    is_secret_table,
)
from core.models import Base

QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
EXPLAIN = re.compile(
    r"^\s*EXPLAIN\b(?:\s+QUERY\s+PLAN\b|\s+ANALY[SZ]E\b|\s+VERBOSE\b|\s*\([^()]*\))*\s*", re.IGNORECASE
)
# EXPLAIN (…) options that only shape the plan's output (not SETTINGS: it shows configuration).
EXPLAIN_OPTION = re.compile(
    r"^\s*(ANALY[SZ]E|VERBOSE|COSTS|BUFFERS|TIMING|SUMMARY|WAL)(\s+(TRUE|FALSE|ON|OFF|0|1))?\s*$"
    r"|^\s*FORMAT\s+(TEXT|JSON|YAML|XML)\s*$",
    re.IGNORECASE,
)
GENERATED_NAME = re.compile(r"^_col_\d+$")
WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)


class RefusedStatement(Exception):
    """The console will not run this statement; the message says why, for the admin."""


@dataclass(frozen=True)
class CheckedStatement:
    sql: str  # what to run: the checked tree, rendered by sqlglot
    is_explain: bool
    # Display names for result columns sqlglot had to name (`_col_0` → `COUNT(*)`).
    headers: tuple[str | None, ...] = ()


@lru_cache(maxsize=1)
def app_schema() -> dict[str, dict[str, str]]:
    """dreambot's tables and their columns (from the models: the same on both databases)."""
    return {
        table.name: {column.name: "TEXT" for column in table.columns} for table in Base.metadata.sorted_tables
    }


def check_statement(sql: str, dialect: str, *, schema_name: str | None = None) -> CheckedStatement:
    """Return the statement to run, or raise `RefusedStatement`. `dialect`: sqlite|postgres."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise RefusedStatement("Type one SELECT statement to run.")
    explain, body = _split_explain(text)
    tree = _values_as_selects(_parse_one(body, dialect))
    _check_nodes(tree, dialect)
    _normalise_tables(tree, dialect, schema_name)
    qualified = _qualify(tree, dialect)
    _check_nodes(qualified, dialect)
    _check_scopes(qualified)
    runnable = qualified.sql(dialect=dialect, comments=False)
    return CheckedStatement(
        sql=f"{explain} {runnable}" if explain else runnable,
        is_explain=bool(explain),
        headers=_headers(tree, qualified, dialect),
    )


def _split_explain(text: str) -> tuple[str, str]:
    """('EXPLAIN …' prefix or '', the query), refusing EXPLAIN options that show more than a plan."""
    match = EXPLAIN.match(text)
    if not match:
        return "", text
    prefix = text[: match.end()].strip()
    for group in re.findall(r"\(([^()]*)\)", prefix):
        for option in group.split(","):
            if not EXPLAIN_OPTION.match(option):
                raise RefusedStatement(
                    f"The EXPLAIN option {option.strip()!r} is not available in the console."
                )
    return prefix, text[match.end() :]


# -- parsing ------------------------------------------------------------------------------


def _parse_one(body: str, dialect: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(body, dialect=dialect) if s is not None]
    except TokenError:
        raise RefusedStatement("Could not read that SQL: a quote or a comment is not closed.") from None
    except SqlglotError as exc:
        raise RefusedStatement(_unreadable(exc)) from None
    except Exception:  # sqlglot has its own bugs; the admin still gets a sentence
        raise RefusedStatement("Could not read that SQL; check its syntax.") from None
    if len(statements) != 1:
        if not statements:
            raise RefusedStatement("Type one SELECT statement to run.")
        raise RefusedStatement("Run one statement at a time (found several separated by ';').")
    tree = statements[0]
    if not isinstance(tree, QUERY_ROOTS):
        raise RefusedStatement(
            f"Only SELECT, WITH … SELECT, VALUES and EXPLAIN are allowed here, not {tree.key.upper()}."
        )
    return tree


def _unreadable(exc: SqlglotError) -> str:
    """sqlglot's complaint as a sentence (its own wording names Python classes)."""
    errors = getattr(exc, "errors", None) or [{}]
    where = errors[0]
    if "line" in where and "col" in where:
        near = f" near {where['highlight']!r}" if where.get("highlight") else ""
        return (
            f"Could not read that SQL at line {where['line']}, column {where['col']}{near}; check its syntax."
        )
    return "Could not read that SQL; check its syntax."


def _values_as_selects(tree: exp.Expr) -> exp.Expr:
    """`VALUES (a, b), (c, d)` → `SELECT a AS column1, b AS column2 UNION ALL SELECT …`."""

    def convert(node: exp.Expr) -> exp.Expr:
        if not isinstance(node, exp.Values):
            return node
        selects: list[exp.Query] = []
        for row in node.expressions:
            cells = row.expressions if isinstance(row, exp.Tuple) else [row]
            selects.append(exp.select(*(cell.copy().as_(f"column{i}") for i, cell in enumerate(cells, 1))))
        if not selects:
            raise RefusedStatement("VALUES needs at least one row.")
        query = reduce(lambda left, right: exp.union(left, right, distinct=False), selects)
        alias = node.args.get("alias")
        return exp.Subquery(this=query, alias=alias.copy()) if alias is not None else query

    return tree.transform(convert)


# -- node kinds ---------------------------------------------------------------------------


def _check_nodes(tree: exp.Expr, dialect: str) -> None:
    for node in tree.walk():
        if isinstance(node, exp.Func):
            if not is_allowed_function(node, dialect):
                raise RefusedStatement(
                    f"The function {function_name(node)}() is not available in the console."
                )
            if isinstance(node, exp.Cast) and not _plain_type(node.args.get("to")):
                to = node.args.get("to")
                target = to.sql(dialect) if isinstance(to, exp.Expr) else "that type"
                raise RefusedStatement(f"Casting to {target} is not available in the console.")
        elif type(node) not in ALLOWED_NODES:
            raise RefusedStatement(_node_message(node))


def _plain_type(to: object) -> bool:
    return isinstance(to, exp.DataType) and to.this in ALLOWED_CASTS and not to.expressions


def _node_message(node: exp.Expr) -> str:
    if isinstance(node, WRITES):
        return f"The console is read-only: {node.key.upper()} is not allowed inside a query."
    if isinstance(node, exp.Into):
        return "The console is read-only: SELECT … INTO is not allowed."
    if isinstance(node, exp.Lock):
        return "The console is read-only: FOR UPDATE / FOR SHARE is not allowed."
    if isinstance(node, exp.TableColumn):
        return f"{node.name} stands for a whole row; list the columns you need."
    if isinstance(node, exp.Dot):
        return "Reading a field of a row value or calling a schema-qualified function is not available in the console."
    if isinstance(node, exp.Placeholder | exp.Parameter | exp.SessionParameter):
        return "Parameters ($1, ?, :name, @x) are not available; write the values into the query."
    return f"{node.key.upper()} is not available in the console (only plain queries over dreambot's tables)."


# -- tables, scopes and columns -----------------------------------------------------------


def _normalise_tables(tree: exp.Expr, dialect: str, schema_name: str | None) -> None:
    """Refuse other schemas, catalogues and tables that are not dreambot's (a CTE's name
    passes here; the scope check binds it); drop the configured schema's name (it is the
    search_path), so every table is looked up in dreambot's own schema."""
    allowed = {"", "main"} if dialect == "sqlite" else {"", (schema_name or "public").lower()}
    cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            continue
        if table.catalog or table.db.lower() not in allowed:
            raise RefusedStatement(f"Only dreambot's own tables can be queried, not {table.sql(dialect)}.")
        if table.db or table.name.lower() not in cte_names:
            _check_stored_table(table.name.lower())
        table.set("db", None)


def _qualify(tree: exp.Expr, dialect: str) -> exp.Expr:
    known: dict[str, object] = {n: cols for n, cols in app_schema().items() if not is_secret_table(n)}
    try:
        return qualify(
            tree.copy(),
            schema=known,
            dialect=dialect,
            validate_qualify_columns=True,
            expand_stars=True,
            quote_identifiers=True,
            identify=True,
        )
    except SqlglotError as exc:
        problem = re.sub(r"\.?\s*Line: \d+, Col: \d+\s*$", "", str(exc).splitlines()[0] if str(exc) else "")
        raise RefusedStatement(f"Could not check that query: {problem or 'it is too unusual'}.") from None
    except Exception:
        raise RefusedStatement(
            "Could not check that query; name each column's table and try again."
        ) from None


def _check_scopes(root: exp.Expr) -> None:
    seen: set[int] = set()
    try:
        scopes = traverse_scope(root)
    except Exception:
        raise RefusedStatement("Could not check that query; simplify it and try again.") from None
    for scope in scopes:
        for table in scope.tables:
            seen.add(id(table))
            _check_table(scope, table)
        for column in scope.columns:
            seen.add(id(column))
            _check_column(scope, column)
        _check_stars(scope)
    # Anything the scope walk did not reach was not checked: refuse it.
    for node in root.walk():
        if isinstance(node, exp.Table) and id(node) not in seen:
            raise RefusedStatement(f"Could not check the table {node.name}; write the query more simply.")
        if isinstance(node, exp.Column) and id(node) not in seen and not _names_an_output(node):
            raise RefusedStatement(f"Could not tell which table {node.name} comes from; name its table.")


def _check_table(scope: Scope, table: exp.Table) -> None:
    if isinstance(table.this, exp.Func):
        name = function_name(table.this)
        if name not in TABLE_FUNCTIONS:
            raise RefusedStatement(f"The table function {name}() is not available in the console.")
        return
    if isinstance(scope.sources.get(table.alias_or_name), Scope):
        return  # a CTE of this query
    name = table.name.lower()
    _check_stored_table(name)
    alias = table.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.columns:
        # `admin_accounts AS a(i, u, p)` renames columns by position: p would be the hash.
        raise RefusedStatement(
            f"Renaming {name}'s columns in FROM is not available; name them in SELECT with AS instead."
        )


def _check_stored_table(name: str) -> None:
    if is_secret_table(name):
        raise RefusedStatement(f"The table {name} holds secrets and can't be read from the console.")
    if name not in app_schema():
        raise RefusedStatement(
            f"There is no dreambot table named {name} (system tables are not available here)."
        )


def _resolve(scope: Scope | None, alias: str) -> object:
    """The source `alias` names, looked up from `scope` outwards (correlated subqueries)."""
    while scope is not None:
        if alias in scope.sources:
            return scope.sources[alias]
        scope = scope.parent
    return None


def _check_column(scope: Scope, column: exp.Column) -> None:
    if isinstance(column.this, exp.Star):
        raise RefusedStatement(f"{column.table}.* could not be expanded here; list the columns you need.")
    if _names_an_output(column):
        return
    source = _resolve(scope, column.table)
    if source is None:
        raise RefusedStatement(f"Could not tell which table {column.name} comes from; name its table.")
    stored = source if isinstance(source, exp.Table) and not isinstance(source.this, exp.Func) else None
    if stored is not None and (stored.name.lower(), column.name.lower()) in SECRET_COLUMNS:
        raise RefusedStatement(
            f"{stored.name}.{column.name} holds a secret and can't be read from the console"
            " (if you used *, list the columns you need instead)."
        )


def _check_stars(scope: Scope) -> None:
    """A `*` left after expansion is only fine over rows that come from no stored table."""
    if not scope.stars:
        return
    for source in scope.sources.values():
        if isinstance(source, exp.Table) and not isinstance(source.this, exp.Func):
            raise RefusedStatement(f"* over {source.name} could not be expanded; list the columns you need.")


def _names_an_output(column: exp.Column) -> bool:
    """`ORDER BY n` where n is a result column's name (the scope walk skips those)."""
    if column.table or not isinstance(column.parent, exp.Ordered):
        return False
    order = column.parent.parent
    query = order.parent if isinstance(order, exp.Order) else None
    return isinstance(query, exp.Query) and column.name in query.named_selects


def _selects(root: exp.Expr) -> list[exp.Expr]:
    return list(root.selects) if isinstance(root, exp.Query) else []


def _headers(original: exp.Expr, qualified: exp.Expr, dialect: str) -> tuple[str | None, ...]:
    """Names for result columns sqlglot had to name `_col_N`: the expression as written
    (from the qualified tree, less its table names, when `*` moved the columns)."""
    starred = any(p.is_star for p in _selects(original))
    names: list[str | None] = []
    for projection in _selects(qualified if starred else original):
        if isinstance(projection, exp.Column) or (
            projection.alias and not GENERATED_NAME.match(projection.alias)
        ):
            names.append(None)
            continue
        shown = projection.unalias().copy()
        shown.set("alias", None)
        if starred:
            for column in shown.find_all(exp.Column):
                column.set("table", None)
            for identifier in shown.find_all(exp.Identifier):
                identifier.set("quoted", False)
        names.append(shown.sql(dialect=dialect))
    return tuple(names)
