"""The bot process of `dreambot up`: migrations, supervised workers, sweeper, adapters and web.

SIGTERM and SIGINT both end it the same way: the web server and adapters wind down, then
every worker the supervisor started is stopped (Celery's warm shutdown, then SIGKILL of
what is left), so nothing it started outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading

from bot.process.console import base_model_line, chat_line, database_line, platforms_line
from bot.process.launcher import up_workers
from bot.process.runtime import run_bot
from bot.process.supervisor import LaunchError, Supervisor
from bot.process.worker_rows import ready_probe
from bot.web.app import create_app
from bot.web.dashboard.console_role import guard_console
from core import migrate
from core.errors import DreambotError
from core.logs import announce
from core.settings import Settings
from core.sweeper import SweeperThread

log = logging.getLogger(__name__)


def serve(settings: Settings, *, with_workers: bool = True, verbose: bool = False) -> None:
    """Run until SIGINT/SIGTERM, then stop every child and thread cleanly."""
    # uvicorn re-raises the signal that stopped it once it has shut down: with SIGTERM's
    # default action that would end this process before the workers are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    supervisor = Supervisor(
        run_dir=settings.data_dir / "run",
        log_dir=None if verbose else settings.data_dir / "logs",
        probe=ready_probe(settings),
        give_up="report",
    )
    stop = threading.Event()
    watcher = threading.Thread(target=supervisor.run, args=(stop,), name="supervisor")
    sweeper = SweeperThread(settings)
    try:
        announce(database_line(settings, migrate.upgrade(settings)))
        announce(base_model_line(settings))
        announce(chat_line(settings))
        if (line := platforms_line(settings)) is not None:
            announce(line)
        if with_workers:
            supervisor.claim(up_workers())
            watcher.start()
        sweeper.start()
        app = create_app(settings, supervisor.states)
        # The SQL console only as a read-only role (PostgreSQL); else it is off, said once.
        guard_console(app, settings, say=lambda line: announce(line, logging.WARNING))
        asyncio.run(run_bot(settings, app))
    except LaunchError as exc:
        raise DreambotError(str(exc)) from None
    except KeyboardInterrupt:  # uvicorn re-raises the signal after its own clean shutdown
        pass
    finally:
        sweeper.stop()
        stop.set()
        if watcher.is_alive():
            watcher.join()
        else:
            supervisor.release()
        announce("dreambot stopped")
