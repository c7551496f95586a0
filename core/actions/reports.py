"""Reported images: anyone may report one; an admin reviews it (delete, dismiss, block).

Report hides the image for everyone at once and queues it for the admins
(`images.review = 'pending'`); the surface then removes the chat message that carried it.
An admin's delete removes the image (row and file); dismiss puts it back and stops further
reports of it; block also blocks the person who made it (and deletes the image).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from core.actions.actor import Actor
from core.actions.people import set_blocked
from core.db import session_scope
from core.dbclock import db_now
from core.errors import NotFound
from core.models import Image, Job
from core.settings import Settings
from core.storage import storage_from_settings

PENDING = Image.review == "pending"


@dataclass(frozen=True)
class Reported:
    text: str  # what to tell the reporter
    job_id: int | None = None  # the job whose chat message to remove (None: leave it)


@dataclass(frozen=True)
class PendingReport:
    image_id: int
    job_id: int
    owner_id: int | None  # who made the image


def report(actor: Actor, image_id: int, whole_message: Callable[[int], bool]) -> Reported:
    """Hide the image for review. `whole_message(n)`: whether a message with n images is
    reported as a whole (its card has one Report button for all of them)."""
    with session_scope(actor.settings) as s:
        image = s.get(Image, image_id)
        if image is None:
            return Reported("That picture is no longer here.")
        if image.review == "dismissed":
            return Reported("Thanks. An admin has already reviewed this picture and kept it.")
        if image.review == "pending":
            return Reported("Thanks, that picture is already hidden and waiting for an admin.", image.job_id)
        siblings = s.scalar(select(func.count(Image.id)).where(Image.job_id == image.job_id)) or 1
        which = Image.job_id == image.job_id if whole_message(siblings) else Image.id == image_id
        s.execute(
            update(Image)
            .where(which, Image.review.is_(None))
            .values(hidden_at=db_now(), reported_at=db_now(), review="pending", reported_by=actor.user_id)
        )
        job_id = image.job_id
    return Reported("Thanks for telling us. I've hidden that picture and an admin will review it.", job_id)


# -- an admin's ----------------------------------------------------------------------------


def pending(settings: Settings, image_id: int) -> tuple[PendingReport, str]:
    """A reported image still waiting for review, and its storage key; `NotFound` otherwise."""
    with session_scope(settings) as session:
        row = session.execute(
            select(Image.job_id, Job.owner_id, Image.storage_key)
            .join(Job, Job.id == Image.job_id)
            .where(Image.id == image_id, PENDING)
        ).first()
    if row is None:
        raise NotFound(f"Image #{image_id} is not waiting for review.")
    return PendingReport(image_id, row.job_id, row.owner_id), row.storage_key


def delete_image(settings: Settings, image_id: int) -> PendingReport:
    """Remove a reported image: row first, then file (never a row without its file)."""
    found, key = pending(settings, image_id)
    with session_scope(settings) as session:
        session.execute(delete(Image).where(Image.id == image_id))
    storage_from_settings(settings).delete(key)
    return found


def dismiss(settings: Settings, image_id: int) -> PendingReport:
    """Keep a reported image: visible again, and not reportable any more."""
    found, _ = pending(settings, image_id)
    with session_scope(settings) as session:
        session.execute(update(Image).where(Image.id == image_id).values(hidden_at=None, review="dismissed"))
    return found


def block_maker(settings: Settings, image_id: int) -> PendingReport:
    """Block the person who made a reported image, and delete the image."""
    found, _ = pending(settings, image_id)
    if found.owner_id is not None:
        with contextlib.suppress(NotFound):  # the maker was forgotten meanwhile
            set_blocked(settings, found.owner_id, True)
    return delete_image(settings, image_id)
