"""The review queue: images people reported (hidden for everyone until an admin decides).

The decisions are `core.actions.reports` (delete, dismiss, block the maker); every one is
audited here.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import desc, func, select
from sqlalchemy.orm import aliased

from bot.web.dashboard import audit
from bot.web.dashboard.auth import Admin, AdminPost, state_of
from bot.web.dashboard.web import back, or_404, page_of, render
from core.actions import reports as review
from core.actions.reports import PENDING, PendingReport
from core.db import session_scope
from core.models import Image, Job, User
from core.settings import Settings

router = APIRouter()


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


def _decide(
    request: Request,
    admin: AdminPost,
    image_id: int,
    act: Callable[[Settings, int], PendingReport],
    action: str,
    message: str,
) -> Response:
    """Carry out an admin's decision on a reported image and audit it."""
    settings = state_of(request).settings
    with or_404():
        done = act(settings, image_id)
    audit.record(
        settings, admin.username, action, f"image:{image_id}", job_id=done.job_id, owner_id=done.owner_id
    )
    return back("/admin/reports", msg=message)


@router.post("/reports/{image_id}/delete")
def report_delete(request: Request, image_id: int, admin: AdminPost) -> Response:
    return _decide(
        request, admin, image_id, review.delete_image, "report.delete", f"Deleted image #{image_id}."
    )


@router.post("/reports/{image_id}/dismiss")
def report_dismiss(request: Request, image_id: int, admin: AdminPost) -> Response:
    message = f"Image #{image_id} is visible again."
    return _decide(request, admin, image_id, review.dismiss, "report.dismiss", message)


@router.post("/reports/{image_id}/block")
def report_block(request: Request, image_id: int, admin: AdminPost) -> Response:
    message = f"Deleted image #{image_id} and blocked its maker."
    return _decide(request, admin, image_id, review.block_maker, "report.block", message)
