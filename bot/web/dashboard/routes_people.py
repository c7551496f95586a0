"""People (quotas, block), subjects (photos, samples, delete), the image gallery, files, audit log."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import desc, func, or_, select

from bot.web.dashboard import audit
from bot.web.dashboard.auth import Admin, AdminPost, state_of
from bot.web.dashboard.web import back, or_404, page_of, render
from core import quotas
from core.actions import forgetting
from core.actions import people as people_actions
from core.actions import subjects as subject_actions
from core.actions.people import QUOTA_FIELDS, QuotaLimits
from core.db import session_scope
from core.errors import NotFound, StorageKeyError
from core.models import AuditLog, Image, Job, Photo, Subject, User, job_subjects
from core.storage import storage_from_settings

router = APIRouter()


@router.get("/people", response_class=HTMLResponse)
def people(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    search = request.query_params.get("q", "").strip()
    stmt = select(User)
    if search:
        like = f"%{search}%"
        stmt = stmt.where(or_(User.display_name.ilike(like), User.platform_user_id.ilike(like)))
    with session_scope(settings) as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        page = page_of(request, total)
        users = list(session.scalars(stmt.order_by(User.id).offset(page.offset).limit(page.size)))
        ids = [u.id for u in users]
        counts = dict(
            session.execute(
                select(Job.owner_id, func.count()).where(Job.owner_id.in_(ids)).group_by(Job.owner_id)
            ).all()
        )
    return render(request, "people.html", admin, users=users, counts=counts, page=page, q=search)


@router.get("/people/{user_id}", response_class=HTMLResponse)
def person(request: Request, user_id: int, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"There is no person #{user_id}.")
        usage = quotas.usage(session, settings, user)
        subjects = list(
            session.scalars(select(Subject).where(Subject.owner_id == user_id).order_by(Subject.id))
        )
        jobs = list(
            session.scalars(select(Job).where(Job.owner_id == user_id).order_by(desc(Job.id)).limit(20))
        )
    defaults = {f: getattr(settings, f) for f in QUOTA_FIELDS}
    return render(
        request, "person.html", admin, user=user, usage=usage, subjects=subjects, jobs=jobs, defaults=defaults
    )


def _quota_value(raw: Any, name: str) -> int | None:
    text = str(raw or "").strip()
    if not text:
        return None  # blank: the deployment default
    if not text.isdigit() or int(text) > 1_000_000:
        raise ValueError(f"{name.replace('_', ' ')} must be a whole number from 0 to 1000000, or blank")
    return int(text)


@router.post("/people/{user_id}/quotas")
async def person_quotas(request: Request, user_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    form = await request.form()
    try:
        values = {f: _quota_value(form.get(f), f) for f in QUOTA_FIELDS}
    except ValueError as exc:
        return back(f"/admin/people/{user_id}", err=str(exc).capitalize() + ".")
    with or_404():
        people_actions.set_quotas(settings, user_id, QuotaLimits(**values))
    audit.record(settings, admin.username, "person.quotas", f"user:{user_id}", **values)
    return back(f"/admin/people/{user_id}", msg="Quotas saved.")


@router.post("/people/{user_id}/block")
async def person_block(request: Request, user_id: int, admin: AdminPost) -> Response:
    settings = state_of(request).settings
    blocked = (await request.form()).get("blocked") == "1"
    with or_404():
        people_actions.set_blocked(settings, user_id, blocked)
    audit.record(settings, admin.username, "person.block" if blocked else "person.unblock", f"user:{user_id}")
    return back(f"/admin/people/{user_id}", msg="Blocked." if blocked else "Unblocked.")


@router.post("/people/{user_id}/forget")
async def person_forget(request: Request, user_id: int, admin: AdminPost) -> Response:
    """Delete everything of this person (core.forget writes the audit row)."""
    settings = state_of(request).settings
    if (await request.form()).get("confirm") != "forget":
        return back(f"/admin/people/{user_id}", err="Type forget in the box to confirm.")
    try:
        done = forgetting.forget_person(settings, user_id, admin.username)
    except NotFound:
        raise HTTPException(404, f"There is no person #{user_id}.") from None
    return back("/admin/people", msg=f"Forgot person #{user_id}: {done.summary()}.")


@router.get("/subjects", response_class=HTMLResponse)
def subjects(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        total = session.scalar(select(func.count(Subject.id))) or 0
        page = page_of(request, total)
        rows = session.execute(
            select(Subject, User.display_name, func.count(Photo.id))
            .join(User, User.id == Subject.owner_id)
            .outerjoin(Photo, Photo.subject_id == Subject.id)
            .group_by(Subject.id, User.display_name)
            .order_by(desc(Subject.id))
            .offset(page.offset)
            .limit(page.size)
        ).all()
    return render(request, "subjects.html", admin, rows=rows, page=page)


def _samples_of(session: Any, subject_id: int, limit: int = 60) -> list[Image]:
    uses = select(job_subjects.c.job_id).where(job_subjects.c.subject_id == subject_id)
    return list(
        session.scalars(
            select(Image)
            .join(Job, Job.id == Image.job_id)
            .where(or_(Job.subject_id == subject_id, Job.id.in_(uses)), Image.hidden_at.is_(None))
            .order_by(desc(Image.id))
            .limit(limit)
        )
    )


@router.get("/subjects/{subject_id}", response_class=HTMLResponse)
def subject(request: Request, subject_id: int, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        subj = session.get(Subject, subject_id)
        if subj is None:
            raise HTTPException(404, f"There is no subject #{subject_id}.")
        owner = session.get(User, subj.owner_id)
        photos = list(session.scalars(select(Photo).where(Photo.subject_id == subject_id).order_by(Photo.id)))
        samples = _samples_of(session, subject_id)
    return render(request, "subject.html", admin, subject=subj, owner=owner, photos=photos, samples=samples)


@router.post("/subjects/{subject_id}/delete")
def subject_delete(request: Request, subject_id: int, admin: AdminPost) -> Response:
    """Delete a subject, its photos and its trained weights (refused while a job uses it)."""
    settings = state_of(request).settings
    try:
        with or_404():
            deleted = subject_actions.delete(settings, subject_id)
    except subject_actions.SubjectInUse as exc:
        return back(f"/admin/subjects/{subject_id}", err=str(exc))
    audit.record(
        settings,
        admin.username,
        "subject.delete",
        f"subject:{subject_id}",
        name=deleted.name,
        owner_id=deleted.owner_id,
        files_removed=deleted.files_removed,
    )
    return back(
        "/admin/subjects", msg=f"Deleted subject {deleted.name!r} and {deleted.files_removed} stored file(s)."
    )


@router.get("/images", response_class=HTMLResponse)
def gallery(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    with session_scope(settings) as session:
        shown = Image.hidden_at.is_(None)  # reported images wait in /admin/reports instead
        total = session.scalar(select(func.count(Image.id)).where(shown)) or 0
        page = page_of(request, total, size=48)
        images = list(
            session.scalars(
                select(Image).where(shown).order_by(desc(Image.id)).offset(page.offset).limit(page.size)
            )
        )
    return render(request, "images.html", admin, images=images, page=page)


def _file_response(settings: Any, key: str) -> Response:
    try:
        data = storage_from_settings(settings).read_bytes(key)
    except (NotFound, StorageKeyError):
        raise HTTPException(404, "That file is no longer in storage.") from None
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    if not media.startswith("image/") or media == "image/svg+xml":
        media = "application/octet-stream"  # never render stored bytes as a page
    return Response(data, media_type=media)


def _stored_file(request: Request, model: type[Image] | type[Photo], item_id: int, what: str) -> Response:
    """The stored bytes of one image or photo."""
    settings = state_of(request).settings
    with session_scope(settings) as session:
        key = session.scalar(select(model.storage_key).where(model.id == item_id))
    if key is None:
        raise HTTPException(404, f"There is no {what} #{item_id}.")
    return _file_response(settings, key)


@router.get("/files/image/{image_id}")
def image_file(request: Request, image_id: int, admin: Admin) -> Response:
    return _stored_file(request, Image, image_id, "image")


@router.get("/files/photo/{photo_id}")
def photo_file(request: Request, photo_id: int, admin: Admin) -> Response:
    return _stored_file(request, Photo, photo_id, "photo")


@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, admin: Admin) -> HTMLResponse:
    settings = state_of(request).settings
    actor, action = request.query_params.get("actor", ""), request.query_params.get("action", "")
    stmt = select(AuditLog)
    if actor:
        stmt = stmt.where(AuditLog.actor == actor)
    if action:
        stmt = stmt.where(AuditLog.action.like(f"{action}%"))
    with session_scope(settings) as session:
        total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
        page = page_of(request, total)
        rows = list(session.scalars(stmt.order_by(desc(AuditLog.id)).offset(page.offset).limit(page.size)))
    return render(request, "audit.html", admin, rows=rows, page=page, actor=actor, action=action)
