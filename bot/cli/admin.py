"""`dreambot admin create NAME` and `dreambot dashboard` (the dashboard on its own)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import current_settings, settings_or_exit

if TYPE_CHECKING:
    pass

admin_app = typer.Typer(help="Admin accounts for the dashboard.", no_args_is_help=True)


@admin_app.command("create")
def admin_create(
    name: Annotated[str, typer.Argument(help="the admin's login name")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input (one line)")
    ] = False,
) -> None:
    """Create a dashboard admin; the password is asked for (twice) unless --password-stdin."""
    from bot.web.dashboard.auth import AccountError, create_admin

    settings = current_settings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        create_admin(settings, name, password)
    except AccountError as exc:
        typer.secho(f"dreambot: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"admin {name!r} created; log in at http://{settings.web_host}:{settings.web_port}/admin/")


@admin_app.command("console-role-sql")
def console_role_sql(
    role: Annotated[str, typer.Option(help="name of the read-only role")] = "dreambot_console",
    schema: Annotated[
        str | None, typer.Option(help="schema (default DREAMBOT_DATABASE_SCHEMA or public)")
    ] = None,
) -> None:
    """Print the SQL that creates a read-only PostgreSQL role for the SQL console."""
    from bot.web.dashboard.console_role import readonly_role_sql

    typer.echo(readonly_role_sql(role, schema or settings_or_exit().database_schema or "public"), nl=False)


@admin_app.command("console-role")
def console_role(
    role: Annotated[str, typer.Option(help="name of the read-only role")] = "dreambot_console",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="read the role's password from standard input (default: a random one)"
        ),
    ] = False,
) -> None:
    """Create or refresh the SQL console's read-only PostgreSQL role (run with the main
    database URL) and print the DREAMBOT_CONSOLE_DATABASE_URL to set."""
    import secrets

    from bot.web.dashboard.console_role import create_console_role, role_problem

    settings = current_settings()
    if settings.is_sqlite:
        typer.secho("dreambot: on SQLite the console needs no role: it opens the file read-only.", err=True)
        raise typer.Exit(1)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else secrets.token_urlsafe(24)
    try:
        url = create_console_role(settings, role, password)
    except Exception as exc:  # psycopg's errors, a bad role name: one line for the operator
        typer.secho(f"dreambot: could not create the console role: {exc}".splitlines()[0], fg="red", err=True)
        raise typer.Exit(1) from None
    problem = role_problem(url, settings.database_schema or "public")
    if problem:
        typer.secho(
            f"dreambot: the role was made, but the console still may not use it: {problem}",
            fg="red",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"DREAMBOT_CONSOLE_DATABASE_URL={url}")


def dashboard(
    host: Annotated[str | None, typer.Option(help="address to listen on (default DREAMBOT_WEB_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default DREAMBOT_WEB_PORT)")] = None,
) -> None:
    """Serve only the admin dashboard (no bot, no workers) at /admin."""
    import uvicorn

    from bot.web.dashboard import create_dashboard_app
    from core.settings import LOOPBACK_HOSTS

    settings = current_settings()
    host = host or settings.web_host
    port = settings.web_port if port is None else port
    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if host not in LOOPBACK_HOSTS and len(secret) < 32:
        typer.secho(
            f"dreambot: DREAMBOT_SESSION_SECRET needs at least 32 random characters to serve on {host}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    from bot.web.dashboard.console_role import guard_console
    from bot.web.security import UVICORN_OPTIONS

    app = create_dashboard_app(settings)
    guard_console(app, settings, say=lambda line: typer.secho(line, fg="yellow", err=True))
    typer.echo(f"dreambot dashboard on http://{host}:{port}/admin/")
    uvicorn.run(app, host=host, port=port, log_level="info", **UVICORN_OPTIONS)
