"""The bot process of `dreambot up`: migrations, workers, sweeper, adapters and the web server."""

from __future__ import annotations

import asyncio
import logging

from bot.dashboard.console_role import guard_console
from bot.launcher import Supervisor
from bot.runtime import run_bot
from bot.web.app import create_app
from core import migrate
from core.settings import Settings
from core.sweeper import SweeperThread

log = logging.getLogger(__name__)


def serve(settings: Settings, *, with_workers: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then stop every child and thread cleanly."""
    revision = migrate.upgrade(settings)
    log.info("database schema at %s", revision)
    supervisor = Supervisor()
    sweeper = SweeperThread(settings)
    try:
        if with_workers:
            supervisor.start_worker("train")
            supervisor.start_worker("sample")
        sweeper.start()
        log.info("web playground on http://%s:%s/", settings.web_host, settings.web_port)
        app = create_app(settings)
        guard_console(app, settings)  # the SQL console only as a read-only role (PostgreSQL)
        asyncio.run(run_bot(settings, app))
    except KeyboardInterrupt:  # uvicorn re-raises the signal after its own clean shutdown
        pass
    finally:
        sweeper.stop()
        supervisor.stop()
        log.info("dreambot stopped")
