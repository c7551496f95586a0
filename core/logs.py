"""Logging for every role: text for people, JSON lines for log shippers, and the job id.

`setup_logging(settings)` routes the standard library's logging (ours, Celery's,
SQLAlchemy's) through structlog's `ProcessorFormatter`; `DREAMBOT_LOG_FORMAT=json` gives
one JSON object a line (Loki, Elasticsearch, CloudWatch), `text` a readable line.

The job id travels in a context variable: `bind_job(job_id)` where work for a job starts
(submit in the bot, the task in a worker, each outbox row in delivery), and every line
logged inside, by any library, carries `job_id`. So `job_id=42` finds one job's story
across the bot host, the broker hop and any number of worker hosts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import structlog
from structlog.contextvars import bound_contextvars, get_contextvars

from core.settings import Settings

HANDLER_NAME = "dreambot"
# The console of `dreambot up` (bot/process/console.py): every part announces itself here.
CONSOLE = "dreambot.up"


def announce(line: str, level: int = logging.INFO) -> None:
    """One line for the person at the terminal of `dreambot up` (and the log file)."""
    logging.getLogger(CONSOLE).log(level, line)


def _processors(fmt: str) -> tuple[list[Any], Any]:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,  # job_id and anything else bound
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        # Plain tracebacks: rich's would print local variables, and locals can hold secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    return shared, renderer


def setup_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Configure the root logger once per process (calling again replaces our handler)."""
    shared, renderer = _processors(settings.log_format)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)  # basicConfig's or Celery's: one format per process
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # structlog's own loggers (structlog.get_logger) end in the same handler.
    structlog.configure(
        processors=[*shared[:1], structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


@contextmanager
def bind_job(job_id: int | None) -> Iterator[None]:
    """Every log line inside carries `job_id` (threads started with a copied context too)."""
    if job_id is None:
        yield
        return
    with bound_contextvars(job_id=int(job_id)):
        yield


def current_job_id() -> int | None:
    value = get_contextvars().get("job_id")
    return int(value) if value is not None else None


def install_celery_hooks(settings: Settings) -> None:
    """In a worker: our logging instead of Celery's, and the job id bound around each task
    (Celery's own lines about the task, too). A task's first argument is its job id."""
    from celery import signals

    def configure(**_: Any) -> None:
        setup_logging(settings)

    def bind(task_id: str | None = None, args: Any = None, **_: Any) -> None:
        if args and isinstance(args[0], int):
            structlog.contextvars.bind_contextvars(job_id=args[0])

    def unbind(**_: Any) -> None:
        structlog.contextvars.unbind_contextvars("job_id")

    # weak=False: these closures have no other reference and must outlive this call.
    signals.setup_logging.connect(configure, weak=False)
    signals.task_prerun.connect(bind, weak=False)
    signals.task_postrun.connect(unbind, weak=False)
