"""The SQL console page: run, CSV export, saved queries, schema browser, quick chart."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from bot.web.dashboard import audit
from bot.web.dashboard.auth import Admin, AdminPost, AdminSession, state_of
from bot.web.dashboard.sqlallow import SECRET_COLUMNS, is_secret_table
from bot.web.dashboard.sqlconsole import QueryFailed, RefusedStatement, console_url, run_query
from bot.web.dashboard.sqlguard import app_schema
from bot.web.dashboard.sqlresult import QueryResult, to_csv
from bot.web.dashboard.web import render
from core.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()
SQL_MAX_CHARS = 20_000


@dataclass(frozen=True)
class SavedQuery:
    name: str
    title: str
    sqlite: str
    postgres: str = ""

    def text(self, is_sqlite: bool) -> str:
        return self.sqlite if is_sqlite or not self.postgres else self.postgres


_GPU_SECONDS = {
    "sqlite": "(julianday(j.finished_at) - julianday(j.started_at)) * 86400",
    "postgres": "extract(epoch FROM j.finished_at - j.started_at)",
}
_GPU_TIME = """SELECT s.id AS subject_id, s.name, s.token, s.class_noun,
       count(j.id) AS jobs,
       round(sum({seconds}), 1) AS gpu_seconds
FROM subjects s
JOIN jobs j ON j.subject_id = s.id
WHERE j.started_at IS NOT NULL AND j.finished_at IS NOT NULL
GROUP BY s.id, s.name, s.token, s.class_noun
ORDER BY gpu_seconds DESC"""

SAVED_QUERIES = [
    SavedQuery(
        "jobs_per_day",
        "Jobs per day",
        "SELECT date(created_at) AS day, count(*) AS jobs,\n"
        "       sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed\n"
        "FROM jobs\nGROUP BY date(created_at)\nORDER BY day",
    ),
    SavedQuery(
        "failures_by_error",
        "Failures by error",
        "SELECT substr(coalesce(error, '(no message)'), 1, 120) AS error, kind, count(*) AS jobs\n"
        "FROM jobs\nWHERE status = 'failed'\nGROUP BY 1, 2\nORDER BY jobs DESC",
    ),
    SavedQuery(
        "busiest_people",
        "Busiest people",
        "SELECT u.id, u.platform, u.display_name, count(j.id) AS jobs,\n"
        "       sum(CASE WHEN j.kind = 'train' THEN 1 ELSE 0 END) AS trainings\n"
        "FROM users u\nJOIN jobs j ON j.owner_id = u.id\n"
        "GROUP BY u.id, u.platform, u.display_name\nORDER BY jobs DESC\nLIMIT 20",
    ),
    SavedQuery(
        "gpu_time_per_subject",
        "GPU time per subject",
        _GPU_TIME.format(seconds=_GPU_SECONDS["sqlite"]),
        _GPU_TIME.format(seconds=_GPU_SECONDS["postgres"]),
    ),
]
SAVED_BY_NAME = {q.name: q for q in SAVED_QUERIES}


def _is_sqlite(settings: Settings) -> bool:
    return console_url(settings).startswith("sqlite")


def schema_browser() -> list[dict[str, Any]]:
    """Tables and columns the console can read; secret ones are listed as hidden."""
    tables = []
    for table, columns in sorted(app_schema().items()):
        if is_secret_table(table):
            continue
        tables.append(
            {
                "name": table,
                "columns": [{"name": c, "hidden": (table, c) in SECRET_COLUMNS} for c in columns],
            }
        )
    return tables


def _page(
    request: Request, admin: AdminSession, sql: str, result: QueryResult | None = None, err: str | None = None
) -> HTMLResponse:
    state = state_of(request)
    settings = state.settings
    is_sqlite = _is_sqlite(settings)
    return render(
        request,
        "sql.html",
        admin,
        sql=sql,
        result=result,
        err=err,
        saved=[(q.name, q.title, q.text(is_sqlite)) for q in SAVED_QUERIES],
        tables=schema_browser(),
        dialect="SQLite" if is_sqlite else "PostgreSQL",
        row_limit=settings.console_row_limit,
        time_limit=settings.console_time_limit,
        console_off=state.console_off,
        status_code=400 if err else 200,
    )


@router.get("/sql", response_class=HTMLResponse)
def sql_form(request: Request, admin: Admin) -> HTMLResponse:
    saved = SAVED_BY_NAME.get(request.query_params.get("saved", ""))
    sql = saved.text(_is_sqlite(state_of(request).settings)) if saved else ""
    return _page(request, admin, sql)


async def _run(
    request: Request, admin: AdminSession, action: str
) -> tuple[str, QueryResult | None, str | None]:
    """Run the form's statement in a thread; audit it either way. Every failure is a
    sentence for the admin and an audit row, never an error page."""
    state = state_of(request)
    settings = state.settings
    sql = str((await request.form()).get("sql", ""))[:SQL_MAX_CHARS]
    try:
        if state.console_off:
            raise QueryFailed(state.console_off)
        result = await run_in_threadpool(run_query, settings, sql)
    except (RefusedStatement, QueryFailed) as exc:
        error = str(exc)
    except Exception:  # a bug must still leave an audit row and a sentence
        log.exception("the SQL console failed on a statement")
        error = "The console could not run that statement (the error is in the server log)."
    else:
        audit.record(
            settings, admin.username, action, "sql", sql=sql, rows=len(result.rows), truncated=result.cut
        )
        return sql, result, None
    audit.record(settings, admin.username, f"{action}.refused", "sql", sql=sql, error=error)
    return sql, None, error


@router.post("/sql", response_class=HTMLResponse)
async def sql_run(request: Request, admin: AdminPost) -> HTMLResponse:
    sql, result, err = await _run(request, admin, "sql.run")
    return _page(request, admin, sql, result, err)


@router.post("/sql/csv")
async def sql_csv(request: Request, admin: AdminPost) -> Response:
    sql, result, err = await _run(request, admin, "sql.export")
    if result is None:
        return _page(request, admin, sql, None, err)
    headers = {"Content-Disposition": 'attachment; filename="dreambot-query.csv"'}
    if result.truncated:
        headers["X-Dreambot-Truncated"] = str(result.row_limit)
    if result.notes:
        headers["X-Dreambot-Cut"] = " ".join(result.notes).encode("ascii", "replace").decode()
    return Response(to_csv(result), media_type="text/csv; charset=utf-8", headers=headers)
