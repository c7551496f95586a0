"""`dreambot admin create`, `dreambot admin console-role-sql` and the docs that quote them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bot.cli.main import app
from bot.web.dashboard.auth import authenticate
from bot.web.dashboard.console_role import readonly_role_sql
from core.settings import Settings
from tests.helpers.profile import settings_env

DOCS = Path(__file__).resolve().parents[4] / "docs" / "dashboard.md"


def test_admin_create_with_password_stdin(sqlite_settings: Settings) -> None:
    runner = CliRunner()
    env = settings_env(sqlite_settings)
    result = runner.invoke(
        app, ["admin", "create", "alice", "--password-stdin"], input="long enough pw\n", env=env
    )
    assert result.exit_code == 0, result.output
    assert authenticate(sqlite_settings, "alice", "long enough pw")
    assert not authenticate(sqlite_settings, "alice", "wrong password")
    again = runner.invoke(
        app, ["admin", "create", "alice", "--password-stdin"], input="long enough pw\n", env=env
    )
    assert again.exit_code == 1 and "already exists" in again.output


def test_admin_create_prompts_twice_and_refuses_short_passwords(sqlite_settings: Settings) -> None:
    runner = CliRunner()
    env = settings_env(sqlite_settings)
    ok = runner.invoke(app, ["admin", "create", "bob"], input="a fine password\na fine password\n", env=env)
    assert ok.exit_code == 0, ok.output
    short = runner.invoke(app, ["admin", "create", "carol", "--password-stdin"], input="short\n", env=env)
    assert short.exit_code == 1 and "at least 10 characters" in short.output


def test_console_role_sql_is_printed_and_documented(sqlite_settings: Settings) -> None:
    result = CliRunner().invoke(app, ["admin", "console-role-sql"], env=settings_env(sqlite_settings))
    assert result.exit_code == 0 and result.output == readonly_role_sql()
    assert "password_hash" not in result.output and "interaction_token" not in result.output
    assert readonly_role_sql() in DOCS.read_text()  # the docs quote the current SQL
