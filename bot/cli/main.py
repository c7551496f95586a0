"""The `dreambot` command line."""

from __future__ import annotations

import socket
import sys
from typing import Annotated

import typer

from bot.cli.admin import admin_app, dashboard
from bot.cli.common import current_settings, fail, settings_or_exit
from bot.cli.local import generate, train
from core.errors import DreambotError
from core.settings import Settings
from gpu_worker.model_cache_cli import model_app

app = typer.Typer(help="dreambot: personalised Stable Diffusion in Discord and Slack.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(model_app, name="model")
app.command()(dashboard)
app.command()(generate)
app.command()(train)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Bring the database schema up to date (safe to run from several hosts at once)."""
    from core import migrate

    settings = settings_or_exit()
    try:
        current = migrate.upgrade(settings, revision)
    except Exception as exc:
        raise fail(f"migration failed: {exc}") from None
    typer.echo(f"database schema at revision {current}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Move the schema back to REVISION ('base' removes every table)."""
    from core import migrate

    migrate.downgrade(settings_or_exit(), revision)
    typer.echo(f"database schema at revision {revision}")


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated: train, sample or both")] = "train,sample",
    name: Annotated[str | None, typer.Option(help="worker name (default QUEUES@host)")] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork (one child) or solo")] = "prefork",
    gpus: Annotated[
        str | None,
        typer.Option(help="'all' or GPU indices '0,1': one worker process per GPU and queue"),
    ] = None,
    cpu: Annotated[
        bool, typer.Option("--cpu", help="run on the CPU (with --gpus: only when no GPU is found)")
    ] = False,
) -> None:
    """Run a GPU worker for the given queues (or, with --gpus, one per GPU and queue)."""
    settings = current_settings()
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in wanted if q not in ("train", "sample")]
    if unknown or not wanted:
        raise fail(f"--queues takes train and/or sample, not {','.join(unknown) or 'nothing'}", 2)
    if gpus is not None or cpu:
        if name is not None:
            raise fail("--name names one worker; with --gpus/--cpu names are QUEUE-gpuN@host", 2)
        _launch_workers(settings, gpus, cpu, wanted)
        return
    from gpu_worker.app import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(settings.queue_name(q) for q in wanted),
            "-n",
            name or f"{'+'.join(wanted)}@{socket.gethostname()}",
            "-c",
            "1",
            "--pool",
            pool,
            "--loglevel",
            settings.log_level,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _launch_workers(settings: Settings, gpus: str | None, cpu: bool, queues: list[str]) -> None:
    """`--gpus`/`--cpu`: plan one process per GPU and queue, run them until stopped."""
    import threading

    from bot.process.launcher import discover_gpus, plan_workers, select_gpus
    from bot.process.supervisor import LaunchError, Supervisor, stop_on_signals
    from bot.process.worker_rows import ready_probe
    from core.logs import setup_logging

    setup_logging(settings)
    try:
        chosen = select_gpus(gpus, discover_gpus()) if gpus is not None else []
    except LaunchError as exc:
        raise fail(str(exc), 2) from None
    if gpus is not None and not chosen:
        if not cpu:
            raise fail(
                "no GPU found on this host (nvidia-smi and torch see none). "
                "Add --cpu to run the workers on the CPU only (slow: minutes per image).",
                2,
            )
        typer.echo("dreambot: no GPU found on this host; running on the CPU only (--cpu)", err=True)
    specs = plan_workers(chosen, queues)
    typer.echo("starting " + ", ".join(f"{s.name} ({s.queues})" for s in specs), err=True)
    stop = threading.Event()
    stop_on_signals(stop)
    supervisor = Supervisor(run_dir=settings.data_dir / "run", probe=ready_probe(settings))
    try:
        supervisor.run(stop, specs)
    except LaunchError as exc:
        raise fail(str(exc)) from None


@app.command()
def up(
    workers: Annotated[bool, typer.Option(help="also start a train and a sample worker")] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="print every log line here (default: DATA_DIR/logs/)")
    ] = False,
) -> None:
    """Run everything on this machine: migrations, a train and a sample worker, the bot and web."""
    from bot.process.console import setup_up_logging
    from bot.process.server import serve
    from core.logs import announce

    settings = settings_or_exit()
    folder = setup_up_logging(settings, verbose)
    if folder is not None:
        announce(f"dreambot: logs in {folder}/ (dreambot up -v prints them here)")
    try:
        serve(settings, with_workers=workers, verbose=verbose)
    except DreambotError as exc:
        raise fail(str(exc)) from None


@app.command()
def retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count what would be removed")] = False,
) -> None:
    """Delete what the retention settings no longer keep (the bot also does this hourly)."""
    from core.retention import clean_up

    report = clean_up(settings_or_exit(), dry_run=dry_run)
    typer.echo(str(report))


@app.command()
def doctor(
    selftest_timeout: Annotated[float, typer.Option(help="seconds to wait for the worker selftest")] = 30,
) -> None:
    """Check the database, broker, storage, LLM endpoint, workers and GPU."""
    from bot.cli.doctor import run_checks

    checks = run_checks(settings_or_exit(), selftest_timeout)
    for check in checks:
        mark = (
            typer.style("ok  ", fg="green")
            if check.ok
            else typer.style("FAIL" if check.required else "warn", fg="red" if check.required else "yellow")
        )
        typer.echo(f"{mark} {check.name:9} {check.detail}")
    if any(not c.ok and c.required for c in checks):
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except DreambotError as exc:
        print(f"dreambot: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
