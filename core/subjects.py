"""Subjects: creating one from photos and starting its training, in one place.

`/train` in chat, the agent's `train_subject` tool and the CLI all reach `start_training`
through `core.actions.subjects.train`, so the rules (3–10 valid photos, a name and class noun as `core.names` allows them, a
unique name, a rare token unique among the person's subjects, quotas, idempotency on the
platform event) live here once.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from core import jobs
from core.db import session_scope
from core.dbclock import db_now
from core.enums import JobKind
from core.errors import UserFacingError
from core.job_progress import JobProgress
from core.models import Job, Subject, User
from core.names import kind_of, subject_names
from core.photo_quality import PhotoReport, PhotoThresholds, check_photos
from core.photos import check_photo, store_subject_photos
from core.quotas import check_job_quota
from core.settings import Settings
from core.storage import storage_from_settings
from core.train_request import TrainRequest

MIN_PHOTOS, MAX_PHOTOS = 3, 10
RARE_TOKENS = ("zwx", "sks", "ohwx", "qzv", "vkb", "xjy", "pqd", "wlx", "tzk", "bfy")
# What a person confirms before photos of a person are used. Stored with the subject.
# The class noun (or the agent's subject_kind) decides; the photo coach's face detector only advises.
CONSENT_TEXT = (
    "I have the right to use these photos: they show me, or the person in them agreed "
    "to me training a model of them."
)


class SubjectError(UserFacingError):
    pass


class ConsentRequired(SubjectError):
    """Photos of a person without the uploader's confirmation: nothing was created."""


class PhotosNeedConfirmation(SubjectError):
    """The photo coach found something to point out and the person has not said "train
    anyway" yet: nothing was created. The message is the set summary and the question;
    `report` has each photo's verdict for surfaces that show more."""

    def __init__(self, report: PhotoReport) -> None:
        super().__init__(report.question())
        self.report = report


@dataclass(frozen=True)
class TrainingStarted:
    subject_id: int
    job_id: int
    token: str
    existing: bool  # this event had already started it (a retry or double click)
    photos: int = 0  # photos it trains on (copies the coach dropped are not)


def pick_token(used: set[str]) -> str:
    """A rare token unique among this person's subjects."""
    for token in RARE_TOKENS:
        if token not in used:
            return token
    n = 2
    while f"zwx{n}" in used:
        n += 1
    return f"zwx{n}"


def check_photo_count(n: int) -> None:
    if n < MIN_PHOTOS:
        raise SubjectError(
            f"I need at least {MIN_PHOTOS} photos of your subject to learn it (you sent {n}). "
            f"{MIN_PHOTOS}–{MAX_PHOTOS} sharp photos from different angles work best."
        )
    if n > MAX_PHOTOS:
        raise SubjectError(f"Please send at most {MAX_PHOTOS} photos (you sent {n}).")


def coach_photos(
    settings: Settings,
    photos: Sequence[tuple[bytes, str]],
    class_noun: str,
    subject_kind: str | None = None,
    strip: bool = False,
) -> PhotoReport:
    """The photo coach's report on photos that passed `check_photo`: what every surface
    shows before training (and `describe_photos` gives the agent). `strip`: with the
    picture of the crops for the training card."""
    person = "person" in (kind_of(class_noun or "object"), subject_kind)
    limits = PhotoThresholds.from_settings(settings)
    return check_photos(photos, person=person, limits=limits, strip=strip)


def check_distinct(report: PhotoReport) -> None:
    if len(report.kept) < MIN_PHOTOS:
        copies = len(report.photos) - len(report.kept)
        raise SubjectError(
            f"{copies} of your {len(report.photos)} photos are copies of another, which leaves "
            f"{len(report.kept)} different ones; I need at least {MIN_PHOTOS}. "
            "Please add photos from other angles or places."
        )


def start_training(
    settings: Settings,
    *,
    owner_id: int,
    name: str,
    class_noun: str,
    photos: Sequence[tuple[bytes, str]],
    conversation_id: int | None = None,
    idempotency_key: str | None = None,
    subject_kind: str | None = None,
    config: dict[str, object] | None = None,
    consent: bool = False,
    keep_photos: bool = False,
    confirmed: bool = False,
) -> TrainingStarted:
    """Validate the photos, create the subject with its photos, and submit its training.

    All or nothing: a bad photo, a taken name or a quota refusal leaves no subject, no
    photo and no job behind. Raises `UserFacingError` subclasses with friendly messages.
    A person (by class noun or `subject_kind`) needs `consent=True`: the uploader confirmed
    `CONSENT_TEXT`, recorded on the subject with when and by whom.

    The photo coach checks the photos first (`coach_photos`): anything it points out raises
    `PhotosNeedConfirmation` unless `confirmed` (the person said "train anyway"). Photos it
    drops as copies are not stored; the others are stored with their training crop.
    """
    name, class_noun = subject_names(name, class_noun)  # or NameRefused
    if not consent and "person" in (kind_of(class_noun), subject_kind):
        raise ConsentRequired(
            f"“{name}” is a person, so I need your confirmation first: {CONSENT_TEXT} "
            "If that's true, send the same photos again and confirm it (tick the consent box, "
            "set consent to yes, or just tell me in the chat)."
        )
    check_photo_count(len(photos))
    for data, filename in photos:  # reject before creating anything, one photo in memory at a time
        check_photo(data, filename)
    report = coach_photos(settings, photos, class_noun, subject_kind, strip=True)
    check_distinct(report)
    if report.needs_confirmation and not confirmed:
        raise PhotosNeedConfirmation(report)
    with session_scope(settings) as session:
        if idempotency_key and (
            job := session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        ):
            subject = session.get(Subject, job.subject_id) if job.subject_id else None
            return TrainingStarted(job.subject_id or 0, job.id, subject.token if subject else "", True)
        check_job_quota(session, settings, owner_id, "train")
        mine = list(session.scalars(select(Subject).where(Subject.owner_id == owner_id)))
        if any(s.name.lower() == name.lower() for s in mine):
            raise SubjectError(f"You already have a subject called “{name}”; pick another name.")
        owner = session.get(User, owner_id)
        subject = Subject(
            owner_id=owner_id,
            name=name,
            token=pick_token({s.token for s in mine}),
            class_noun=class_noun,
            base_model=settings.base_model,
            method="lora",
            status="pending",
            keep_photos=keep_photos,
        )
        if consent:
            subject.consent_at = db_now()
            subject.consent_by = f"{owner.platform}:{owner.platform_user_id}" if owner else f"user:{owner_id}"
            subject.consent_text = CONSENT_TEXT
        session.add(subject)
        session.flush()
        subject_id, token = subject.id, subject.token
    try:
        store_subject_photos(
            settings, subject_id, [photos[i] for i in report.kept], crops=report.kept_crops(), checked=True
        )
        job = jobs.submit(
            settings,
            kind=JobKind.TRAIN,
            owner_id=owner_id,
            subject_ids=[subject_id],
            conversation_id=conversation_id,
            idempotency_key=idempotency_key,
            params=TrainRequest(
                subject_kind=subject_kind or kind_of(class_noun), config=config or {}
            ).to_params(),
            progress=_strip_preview(report),
        )
    except BaseException:
        delete_subject(settings, subject_id)
        raise
    return TrainingStarted(subject_id, job.id, token, False, len(report.kept))


def _strip_preview(report: PhotoReport) -> JobProgress:
    """The card's picture until training reports its own: the crops it will learn from."""
    if not report.strip:
        return JobProgress()
    return JobProgress(preview="data:image/jpeg;base64," + base64.b64encode(report.strip).decode())


def delete_subject(settings: Settings, subject_id: int) -> int:
    """Remove a subject, its rows (photos cascade) and every stored file under it.

    Rows first, then files: a crash in between leaves orphan files (retention removes
    them), never a row pointing at a missing file. Returns how many files went."""
    with session_scope(settings) as session:
        if (row := session.get(Subject, subject_id)) is not None:
            session.delete(row)
    return storage_from_settings(settings).delete_prefix(f"subjects/{subject_id}/")
