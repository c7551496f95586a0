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


def silent_peer_settings(silent_after: float) -> dict[str, int]:
    """PostgreSQL settings with which the server drops a client host that went silent
    (cable pulled, VM frozen) within about `silent_after` seconds.

    Why: every heartbeat is a transaction, so a worker cut at the wrong moment leaves a
    session idle on the server with the job's row lock held, and no packet ever says the
    host is gone; on TCP's defaults the server waits hours and the sweeper's requeue waits
    on that lock. Keepalive probes end an idle session; the user timeout ends one whose
    sends go unacknowledged.
    """
    idle = max(1, round(silent_after / 2))
    interval = max(1, round(silent_after / 8))
    return {
        "tcp_keepalives_idle": idle,
        "tcp_keepalives_interval": interval,
        "tcp_keepalives_count": 4,
        "tcp_user_timeout": max(1000, round(silent_after * 1000)),  # milliseconds
    }


def _set_on_connect(values: dict[str, int]) -> Any:
    # SET after connecting rather than startup `options`: poolers such as PgBouncer refuse
    # unknown startup parameters but pass SET through.
    def apply(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            for name, value in values.items():
                if name == "tcp_user_timeout" and dbapi_conn.info.server_version < 120000:
                    continue  # new in PostgreSQL 12
                cur.execute(f"SET {name} = {int(value)}")
        dbapi_conn.commit()

    return apply


def build_engine(
    url: str, *, schema: str | None = None, silent_after: float | None = None, **kwargs: Any
) -> Engine:
    """A new engine for `url`; `schema` pins PostgreSQL's search_path (test isolation);
    `silent_after`: seconds after which PostgreSQL drops a silent client host."""
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
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    if silent_after is not None:
        event.listen(engine, "connect", _set_on_connect(silent_peer_settings(silent_after)))
    return engine


def get_engine(settings: Settings) -> Engine:
    """The shared engine for these settings (created once per process). PostgreSQL drops
    a silent host's sessions within the lease, so its locks never outlive its jobs."""
    url = settings.resolved_database_url
    schema = settings.database_schema
    key = f"{url}#{schema or ''}#{settings.lease_timeout}"
    with _lock:
        if key not in _engines:
            _engines[key] = build_engine(url, schema=schema, silent_after=settings.lease_timeout)
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
