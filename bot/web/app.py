"""The web server: playground at `/`, health at `/healthz` (admin dashboard mounts at /admin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select, text

from core.db import session_scope
from core.dbclock import db_now
from core.models import Job, Worker
from core.settings import Settings

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def health(settings: Settings) -> dict[str, Any]:
    """Database reachable, jobs by status, workers seen recently."""
    with session_scope(settings) as session:
        session.execute(text("SELECT 1"))
        by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        recent = db_now(-3 * settings.heartbeat_interval - 5)
        workers = list(session.scalars(select(Worker.name).where(Worker.last_seen_at >= recent)))
    return {"status": "ok", "jobs": by_status, "workers": sorted(workers)}


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="dreambot", docs_url=None, redoc_url=None)
    app.state.settings = settings

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health(settings)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "index.html", {"health": health(settings)})

    return app
