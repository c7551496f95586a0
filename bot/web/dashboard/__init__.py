"""The admin dashboard at /admin: overview, jobs, people, subjects, images, reports, SQL console, audit log.

`mount_dashboard(app, settings)` adds it to an existing FastAPI app (the web server
that also serves the playground); `create_dashboard_app(settings)` is the standalone
server of `dreambot dashboard`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FastAPI is imported when the dashboard is built: `dreambot worker` needs none
    from fastapi import FastAPI

    from core.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


def mount_dashboard(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard under /admin on `app` (its state lives in app.state.dashboard)."""
    from fastapi import APIRouter
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from bot.web.dashboard import routes_auth, routes_jobs, routes_moderation, routes_people, routes_sql
    from bot.web.dashboard.auth import DashboardState

    app.state.dashboard = DashboardState(settings)
    app.mount("/admin/static", StaticFiles(directory=STATIC_DIR), name="admin-static")
    router = APIRouter(prefix="/admin")
    for module in (routes_auth, routes_jobs, routes_people, routes_sql, routes_moderation):
        router.include_router(module.router)
    app.include_router(router)

    @app.get("/admin", include_in_schema=False)
    def admin_root() -> RedirectResponse:
        return RedirectResponse("/admin/", status_code=307)


def create_dashboard_app(settings: Settings) -> FastAPI:
    """The dashboard alone (no playground), for `dreambot dashboard`."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from bot.web.security import install_security

    app = FastAPI(title="dreambot admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    install_security(app, settings)
    mount_dashboard(app, settings)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/admin/", status_code=307)

    return app
