"""The web server: the playground at `/`, health at `/healthz`, Prometheus at `/metrics`,
the admin dashboard at `/admin`."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select, text

from bot.chat.service import ConversationService
from bot.web.dashboard import mount_dashboard
from bot.web.playground import WebPoster, playground_router
from bot.web.security import install_security
from core import metrics, stats
from core.db import session_scope
from core.models import Job
from core.settings import Settings

if TYPE_CHECKING:
    from bot.process.supervisor import WorkerState

STATIC_DIR = Path(__file__).parent / "static"


def health(settings: Settings, supervised: Callable[[], list[WorkerState]] | None = None) -> dict[str, Any]:
    """Database reachable, jobs by status, workers online, and what is missing.

    `missing` names each worker this process supervises that is not serving (exited and
    waiting to restart, given up on, starting, silent) and each queue no online worker
    serves; `status` is "degraded" while anything is missing. Always HTTP 200 while the
    web process answers: a load balancer must not drop the bot because a GPU worker is down.
    """
    with session_scope(settings) as session:
        session.execute(text("SELECT 1"))
        by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        workers = stats.queues_online(session, settings)
    missing: list[dict[str, Any]] = [
        {"worker": w.name, "queues": w.queues.split(","), "state": w.state, "detail": w.detail}
        for w in (supervised() if supervised else [])
        if not w.healthy
    ]
    served = {kind for kinds in workers.values() for kind in kinds}
    for kind in stats.QUEUE_KINDS:
        if kind not in served and not any(kind in m["queues"] for m in missing):
            missing.append(
                {"worker": None, "queues": [kind], "state": "absent", "detail": f"no {kind} worker online"}
            )
    # A supervised worker that died a moment ago still has a fresh row: not online for us.
    gone = {m["worker"] for m in missing}
    return {
        "status": "degraded" if missing else "ok",
        "jobs": by_status,
        "workers": sorted(set(workers) - gone),
        "missing": missing,
    }


def create_app(settings: Settings, supervised: Callable[[], list[WorkerState]] | None = None) -> FastAPI:
    """The web app; `supervised` reports the workers this process runs (`dreambot up`)."""
    app = FastAPI(title="dreambot", docs_url=None, redoc_url=None)
    app.state.settings = settings
    install_security(app, settings)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return health(settings, supervised)

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
