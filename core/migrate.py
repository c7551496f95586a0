"""Schema migrations: one function runs them under a lock; everyone else checks the version.

`upgrade` is called by `dreambot db upgrade` and at the start of `dreambot up`. It holds
a PostgreSQL advisory lock (or a file lock beside a SQLite file) so two hosts starting at
once never migrate twice. Workers and the bot call `check_schema` and refuse to run on
a schema that is not the code's head revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

import migrations
from core.db import get_engine
from core.errors import SchemaOutdated
from core.settings import Settings

ADVISORY_LOCK_ID = 0x64726561  # "drea"


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["settings"] = settings
    return cfg


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def migration_lock(settings: Settings) -> Iterator[None]:
    """Only one process migrates a database at a time."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite":
        db_file = Path(url.database or "dreambot.db")
        db_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db_file) + ".migrate.lock", timeout=300):
            yield
        return
    engine = get_engine(settings)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ADVISORY_LOCK_ID})
            conn.commit()


def upgrade(settings: Settings, revision: str = "head") -> str | None:
    """Bring the schema to `revision` under the lock; returns the revision now current."""
    with migration_lock(settings):
        command.upgrade(alembic_config(settings), revision)
    return current_revision(get_engine(settings))


def downgrade(settings: Settings, revision: str = "base") -> None:
    with migration_lock(settings):
        command.downgrade(alembic_config(settings), revision)


def check_schema(settings: Settings) -> None:
    """Raise `SchemaOutdated` unless the database is at the code's head revision."""
    current = current_revision(get_engine(settings))
    head = head_revision(settings)
    if current != head:
        where = "empty" if current is None else f"at revision {current}"
        raise SchemaOutdated(
            f"The database schema is {where} but this dreambot needs {head}: run `dreambot db upgrade`."
        )
