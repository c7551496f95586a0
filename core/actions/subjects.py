"""Subjects: train one on photos, list a person's, ask the photo coach, and (admin) delete one.

The rules of a training (photo count and checks, names, tokens, consent, quotas) stay in
`core.subjects`; these are the entry points every surface calls. Refusals are
`core.subjects.ConsentRequired` and `PhotosNeedConfirmation` (ask the person, then call
again), `core.photos.PhotoRejected` and other `UserFacingError`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, or_, select

from core.actions.actor import Actor
from core.db import session_scope
from core.errors import NotFound, Refused
from core.models import ACTIVE_STATES, Job, Subject, job_subjects
from core.photo_quality import PhotoReport
from core.photos import check_photo
from core.settings import Settings
from core.subjects import TrainingStarted, coach_photos, delete_subject, start_training


class Train(BaseModel):
    """A new subject from these photos (bytes, file name)."""

    model_config = ConfigDict(frozen=True)

    name: str
    class_noun: str
    photos: list[tuple[bytes, str]]
    subject_kind: Literal["object", "pet", "person"] | None = None
    consent: bool = False  # the uploader confirmed core.subjects.CONSENT_TEXT
    keep_photos: bool = False  # keep the photos after training (deleted otherwise)
    confirmed: bool = False  # "train anyway": the photo coach's question was answered
    config: dict[str, object] | None = None  # training settings (the CLI's --config/--set)


@dataclass(frozen=True)
class SubjectView:
    id: int
    name: str
    class_noun: str
    status: str  # pending | training | ready | failed
    trained: bool  # has trained weights: it can be drawn


@dataclass(frozen=True)
class SubjectDeleted:
    name: str
    owner_id: int
    files_removed: int


class SubjectInUse(Refused):
    """An admin may not delete a subject while a job that uses it is queued or running."""


def train(actor: Actor, request: Train) -> TrainingStarted:
    """Create the subject and queue its training (once per platform event)."""
    started = start_training(
        actor.settings,
        owner_id=actor.user_id,
        conversation_id=actor.conversation_id,
        idempotency_key=actor.next_key(),
        **request.model_dump(),
    )
    actor.done(started.job_id)
    return started


def list_subjects(actor: Actor) -> list[SubjectView]:
    """The person's subjects, oldest first."""
    with session_scope(actor.settings) as session:
        rows = session.scalars(select(Subject).where(Subject.owner_id == actor.user_id).order_by(Subject.id))
        return [SubjectView(s.id, s.name, s.class_noun, s.status, bool(s.artifact_key)) for s in rows]


def coach(settings: Settings, photos: Sequence[tuple[bytes, str]], class_noun: str) -> PhotoReport:
    """The photo coach's verdicts on photos before any training (what /train would ask).
    Raises `PhotoRejected` for a file that is not a usable photo."""
    for data, filename in photos:  # one decoded photo in memory at a time
        check_photo(data, filename)
    return coach_photos(settings, photos, class_noun)


# -- an admin's ----------------------------------------------------------------------------


def delete(settings: Settings, subject_id: int) -> SubjectDeleted:
    """Delete a subject, its photos and its trained weights (database and storage).

    Refused while a job that uses it is queued or running. Images already delivered stay
    (they belong to their jobs and conversations)."""
    with session_scope(settings) as session:
        subject = session.get(Subject, subject_id)
        if subject is None:
            raise NotFound(f"There is no subject #{subject_id}.")
        uses = select(job_subjects.c.job_id).where(job_subjects.c.subject_id == subject_id)
        busy = session.scalar(
            select(func.count()).where(
                Job.status.in_(ACTIVE_STATES), or_(Job.subject_id == subject_id, Job.id.in_(uses))
            )
        )
        if busy:
            raise SubjectInUse(f"{busy} job(s) using it are still active.")
        name, owner_id = subject.name, subject.owner_id
    return SubjectDeleted(name, owner_id, delete_subject(settings, subject_id))
