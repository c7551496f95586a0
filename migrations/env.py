"""Alembic environment: the URL comes from dreambot's settings, never from alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from core.db import get_engine
from core.models import Base
from core.settings import Settings, load_settings

config = context.config
settings: Settings = config.attributes.get("settings") or load_settings()
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=settings.resolved_database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = get_engine(settings)
    with engine.connect() as connection:
        if settings.database_schema:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database_schema}"'))
            connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things; batch mode copies the table instead.
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
