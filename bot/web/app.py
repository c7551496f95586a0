"""The web server: the playground at `/`, health at `/healthz`, the admin dashboard at `/admin`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select, text

from bot.dashboard import mount_dashboard
from bot.platforms.web import WebPoster, playground_router
from bot.service import ConversationService
from core.db import session_scope
from core.dbclock import db_now
from core.models import Job, Worker
from core.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


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

    # The playground at `/`: delivery posts to it through `app.state.poster`.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(playground_router(settings, ConversationService(settings)))
    app.state.poster = WebPoster()

    mount_dashboard(app, settings)
    return app
