"""Engines and sessions. One engine per (URL, schema) per process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings

_Row = TypeVar("_Row")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (dashboard, delivery) run beside the one writer; busy_timeout makes
    # concurrent writers queue up instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def build_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> Engine:
    """A new engine for `url`; `schema` pins PostgreSQL's search_path (test isolation)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def get_engine(settings: Settings) -> Engine:
    """The shared engine for these settings (created once per process)."""
    url = settings.resolved_database_url
    schema = settings.database_schema
    key = f"{url}#{schema or ''}"
    with _lock:
        if key not in _engines:
            _engines[key] = build_engine(url, schema=schema)
        return _engines[key]


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and at the end of tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE and return how many rows it changed (for conditional writes:
    "only if the job is still in the state we saw")."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult), "rows_changed takes an UPDATE or DELETE"
    return result.rowcount


def insert_or_merge(session: Session, model: Any) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that can take `.on_conflict_do_nothing()` / `.on_conflict_do_update()`:
    both databases we run on spell it the same, but each dialect has its own statement."""
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    return dialect.insert(model)


def get_or_insert(
    session: Session, model: type[_Row], keys: dict[str, Any], extra: dict[str, Any] | None = None
) -> _Row:
    """The row of `model` with these unique `keys`, inserted (with `extra`) if there is none.

    Safe against two first inserts at once: the insert does nothing when the row exists,
    and the row is then read by its keys. `extra` is written only by the insert."""
    session.execute(insert_or_merge(session, model).values(**keys, **(extra or {})).on_conflict_do_nothing())
    row = session.scalar(select(model).filter_by(**keys))
    assert row is not None
    return row
