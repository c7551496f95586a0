"""The review queue: images people reported (hidden for everyone until an admin decides).

Delete removes the image (row and file); dismiss puts it back and stops further reports
of it; block also blocks the person who made it (and deletes the image). Every action is
audited.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import delete, desc, func, select, update
from sqlalchemy.orm import aliased

from bot.dashboard import audit
from bot.dashboard.auth import Admin, AdminPost, state_of
from bot.dashboard.web import back, page_of, render
from core.db import session_scope
from core.models import Image, Job, User
from core.settings import Settings
from core.storage import storage_from_settings

router = APIRouter()
PENDING = Image.review == "pending"


@router.get("/reports", response_class=HTMLResponse)
def reports(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    owner, reporter = aliased(User), aliased(User)
    with session_scope(settings) as session:
        total = session.scalar(select(func.count(Image.id)).where(PENDING)) or 0
        page = page_of(request, total, size=24)
        rows = session.execute(
            select(Image, owner, reporter)
            .join(Job, Job.id == Image.job_id)
            .outerjoin(owner, owner.id == Job.owner_id)
            .outerjoin(reporter, reporter.id == Image.reported_by)
            .where(PENDING)
            .order_by(desc(Image.reported_at), desc(Image.id))
            .offset(page.offset)
            .limit(page.size)
        ).all()
    return render(request, "reports.html", admin, rows=rows, page=page)


def _pending(settings: Settings, image_id: int) -> tuple[int, int | None, str]:
    """(job id, owner id, storage key) of a reported image still waiting for review."""
    with session_scope(settings) as session:
        row = session.execute(
            select(Image.job_id, Job.owner_id, Image.storage_key)
            .join(Job, Job.id == Image.job_id)
            .where(Image.id == image_id, PENDING)
        ).first()
    if row is None:
        raise HTTPException(404, f"Image #{image_id} is not waiting for review.")
    return row.job_id, row.owner_id, row.storage_key


def _delete_image(settings: Settings, image_id: int, key: str) -> None:
    with session_scope(settings) as session:
        session.execute(delete(Image).where(Image.id == image_id))
    storage_from_settings(settings).delete(key)  # row first: never a row without its file


@router.post("/reports/{image_id}/delete")
def report_delete(request: Request, image_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    job_id, owner_id, key = _pending(settings, image_id)
    _delete_image(settings, image_id, key)
    audit.record(
        settings, admin.username, "report.delete", f"image:{image_id}", job_id=job_id, owner_id=owner_id
    )
    return back("/admin/reports", msg=f"Deleted image #{image_id}.")


@router.post("/reports/{image_id}/dismiss")
def report_dismiss(request: Request, image_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    job_id, owner_id, _ = _pending(settings, image_id)
    with session_scope(settings) as session:
        session.execute(update(Image).where(Image.id == image_id).values(hidden_at=None, review="dismissed"))
    audit.record(
        settings, admin.username, "report.dismiss", f"image:{image_id}", job_id=job_id, owner_id=owner_id
    )
    return back("/admin/reports", msg=f"Image #{image_id} is visible again.")


@router.post("/reports/{image_id}/block")
def report_block(request: Request, image_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    job_id, owner_id, key = _pending(settings, image_id)
    if owner_id is not None:
        with session_scope(settings) as session:
            session.execute(update(User).where(User.id == owner_id).values(is_blocked=True))
    _delete_image(settings, image_id, key)
    audit.record(
        settings, admin.username, "report.block", f"image:{image_id}", job_id=job_id, owner_id=owner_id
    )
    return back("/admin/reports", msg=f"Deleted image #{image_id} and blocked its maker.")
