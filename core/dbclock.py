"""The database's clock, as an SQL expression, with sub-second precision on every dialect.

Leases and sweeps compare times written by different hosts, so every timestamp the job
lifecycle writes or compares comes from here, never from `datetime.now()` in Python.
Values are naive UTC.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement


class db_now(FunctionElement):
    """`now() + offset_seconds` in naive UTC, evaluated by the database."""

    type = DateTime()
    inherit_cache = True

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self.offset_seconds = float(offset_seconds)
        super().__init__()


def _offset(element: db_now) -> float:
    return element.offset_seconds


@compiles(db_now)
def _default(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(db_now, "sqlite")
def _sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # The same text format SQLAlchemy stores, so string comparison orders correctly.
    offset = _offset(element)
    modifier = f", '{offset:+.3f} seconds'" if offset else ""
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier})"


@compiles(db_now, "postgresql")
def _postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(), not now(): a long transaction must not freeze its own clock.
    offset = _offset(element)
    base = "(clock_timestamp() AT TIME ZONE 'UTC')"
    return f"({base} + interval '{offset:.3f} seconds')" if offset else base
