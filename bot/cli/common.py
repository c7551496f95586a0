"""What every `dreambot` command shares: settings read once with a friendly exit on a bad
value, the schema check for commands that need the database, and the one way to fail."""

from __future__ import annotations

import typer

from core.errors import SchemaOutdated
from core.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.secho(f"dreambot: bad setting: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


def current_settings() -> Settings:
    """Settings for a command that needs the database at the code's schema (else exit 1)."""
    from core import migrate

    settings = settings_or_exit()
    try:
        migrate.check_schema(settings)
    except SchemaOutdated as exc:
        raise fail(str(exc)) from None
    return settings


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"dreambot: {message}", fg="red", err=True)
    return typer.Exit(code)
