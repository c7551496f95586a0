"""The database's clock, as an SQL expression, with sub-second precision on every dialect.

Leases and sweeps compare times written by different hosts, so every timestamp the job
lifecycle writes or compares comes from here, never from `datetime.now()` in Python.
Values are naive UTC. The offset is a bound parameter, so SQLAlchemy's statement cache
never reuses one offset for another.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime, Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

SQLITE_FORMAT = "'%Y-%m-%d %H:%M:%f'"  # the text format SQLAlchemy stores: compares as text


class db_now(FunctionElement):  # lower case: reads like the SQL function it stands for
    """`now() + offset_seconds` in naive UTC, evaluated by the database."""

    type = DateTime()
    inherit_cache = True

    def __init__(self, offset_seconds: float = 0.0) -> None:
        if offset_seconds:
            super().__init__(literal(float(offset_seconds), Float()))
        else:
            super().__init__()


@compiles(db_now)
def _default(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "sqlite")
def _sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    if not element.clauses.clauses:
        return f"strftime({SQLITE_FORMAT}, 'now')"
    offset = compiler.process(element.clauses, **kw)
    return f"strftime({SQLITE_FORMAT}, julianday('now') + ({offset}) / 86400.0)"


@compiles(db_now, "postgresql")
def _postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(), not now(): a long transaction must not freeze its own clock.
    base = "(clock_timestamp() AT TIME ZONE 'UTC')"
    if not element.clauses.clauses:
        return base
    offset = compiler.process(element.clauses, **kw)
    return f"({base} + make_interval(secs => CAST({offset} AS double precision)))"
