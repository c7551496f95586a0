"""Overview, jobs (list, detail, cancel, retry) and the live-refresh API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import asc, desc, func, select
from sqlalchemy.orm import selectinload

from bot.web.dashboard import audit
from bot.web.dashboard.auth import Admin, AdminPost, state_of
from bot.web.dashboard.web import back, or_404, page_of, render
from core import jobs as job_lifecycle
from core import stats
from core.actions import jobs as job_actions
from core.db import session_scope
from core.enums import JobKind, JobState
from core.errors import DreambotError, UserFacingError
from core.models import JOB_KINDS, JOB_STATES, Job, User

router = APIRouter()

SORTS = {"id": Job.id, "created": Job.created_at, "status": Job.status, "kind": Job.kind, "queue": Job.queue}


def overview_data(request: Request) -> dict[str, Any]:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        return stats.overview(session, settings)


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, admin: Admin) -> HTMLResponse:
    return render(request, "overview.html", admin, data=overview_data(request))


@router.get("/api/overview")
def overview_api(request: Request, admin: Admin) -> dict[str, Any]:
    return overview_data(request)


@router.get("/jobs", response_class=HTMLResponse)
def job_list(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    q = request.query_params
    status, kind, owner = q.get("status", ""), q.get("kind", ""), q.get("owner", "")
    sort = q.get("sort", "id") if q.get("sort") in SORTS else "id"
    direction = "asc" if q.get("dir") == "asc" else "desc"
    stmt = select(Job)
    if status in JOB_STATES:
        stmt = stmt.where(Job.status == JobState(status))
    if kind in JOB_KINDS:
        stmt = stmt.where(Job.kind == JobKind(kind))
    if owner.isdigit():
        stmt = stmt.where(Job.owner_id == int(owner))
    with session_scope(settings) as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        page = page_of(request, total)
        order = asc(SORTS[sort]) if direction == "asc" else desc(SORTS[sort])
        rows = list(session.scalars(stmt.order_by(order, desc(Job.id)).offset(page.offset).limit(page.size)))
        names = _owner_names(session, {j.owner_id for j in rows if j.owner_id})
    return render(
        request,
        "jobs.html",
        admin,
        jobs=rows,
        names=names,
        page=page,
        filters={"status": status, "kind": kind, "owner": owner, "sort": sort, "dir": direction},
        states=JOB_STATES,
        kinds=JOB_KINDS,
        sorts=list(SORTS),
    )


def _owner_names(session: Any, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.display_name, User.platform).where(User.id.in_(ids)))
    return {uid: f"{name or '?'} ({platform})" for uid, name, platform in rows}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_detail(request: Request, job_id: int, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        job = session.scalar(
            select(Job).where(Job.id == job_id).options(selectinload(Job.images), selectinload(Job.subjects))
        )
        if job is None:
            raise HTTPException(404, f"There is no job #{job_id}.")
        owner = session.get(User, job.owner_id) if job.owner_id else None
    return render(
        request,
        "job.html",
        admin,
        job=job,
        owner=owner,
        can_cancel=job.status not in job_lifecycle.TERMINAL,
        can_retry=job.status in job_actions.RETRYABLE,
    )


@router.post("/jobs/{job_id}/cancel")
def job_cancel(request: Request, job_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    try:
        state = job_actions.cancel_any(settings, job_id)
    except UserFacingError as exc:
        return back(f"/admin/jobs/{job_id}", err=str(exc))
    audit.record(settings, admin.username, "job.cancel", f"job:{job_id}", result=state)
    message = "Cancelled." if state == JobState.CANCELLED else f"Cancel requested (the job is {state})."
    return back(f"/admin/jobs/{job_id}", msg=message)


@router.post("/jobs/{job_id}/retry")
def job_retry(request: Request, job_id: int, admin: AdminPost) -> Response:
    """Submit a copy of a failed or cancelled job (the original stays as it was)."""
    settings = state_of(request).settings
    try:
        with or_404():
            new_id = job_actions.retry(settings, job_id)
    except job_actions.NotRetryable as exc:
        return back(f"/admin/jobs/{job_id}", err=str(exc))
    except DreambotError as exc:  # quota, blocked person, …: say so on the page
        audit.record(settings, admin.username, "job.retry_refused", f"job:{job_id}", error=str(exc))
        return back(f"/admin/jobs/{job_id}", err=f"Could not retry: {exc}")
    audit.record(settings, admin.username, "job.retry", f"job:{job_id}", new_job=new_id)
    return back(f"/admin/jobs/{new_id}", msg=f"Retry of job #{job_id} submitted as job #{new_id}.")
