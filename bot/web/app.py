"""The web server: the playground at `/`, health at `/healthz`, Prometheus at `/metrics`,
the admin dashboard at `/admin`."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select, text

from bot.dashboard import mount_dashboard
from bot.platforms.web import WebPoster, playground_router
from bot.service import ConversationService
from bot.web.security import install_security
from core import metrics
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
    install_security(app, settings)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health(settings)

    registry = metrics.make_registry(settings)

    @app.get("/metrics")
    def prometheus(request: Request) -> Response:
        # A plain def: FastAPI runs it in a thread, so the database reads never block the loop.
        token = settings.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, token.get_secret_value().encode()):
                raise HTTPException(401, "bearer token required", {"WWW-Authenticate": "Bearer"})
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE_LATEST)

    # The playground at `/`: delivery posts to it through `app.state.poster`.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(playground_router(settings, ConversationService(settings)))
    app.state.poster = WebPoster()

    mount_dashboard(app, settings)
    return app
