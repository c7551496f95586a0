"""Retention: delete what the settings say is kept no longer, and report what went.

- training photos of a trained subject (`status` ready, a model stored), unless the
  person chose to keep them or `RETENTION_KEEP_TRAINING_PHOTOS` is on;
- generated images older than `RETENTION_IMAGES_DAYS` (rows and files; jobs stay);
- chat messages older than `RETENTION_CONVERSATION_DAYS` and the photos attached to them;
- leftovers of jobs that failed or were cancelled more than `RETENTION_FAILED_DAYS` ago
  (their files and images), and subjects whose training failed that long ago;
- orphan files: `subjects/{id}/`, `jobs/{id}/`, `conversations/{id}/[messages/{id}/]`
  whose row is gone (say, a worker still writing when its rows were forgotten);
- platform event ids older than `EVENT_DAYS` (only needed to ignore redeliveries).

Ages are measured with the database's clock. `clean_up(dry_run=True)` counts without
deleting. Safe to run from several processes at once: every delete is by id and a file
already gone counts as nothing.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.dbclock import db_now
from core.models import (
    ACTIVE_STATES,
    Conversation,
    ConversationMessage,
    Image,
    Job,
    Photo,
    PlatformEvent,
    Subject,
    job_subjects,
)
from core.settings import Settings
from core.storage import Storage, storage_from_settings

log = logging.getLogger(__name__)

DAY = 86400.0
EVENT_DAYS = 7  # Slack retries for minutes, Discord interactions live 15 minutes
# Whose a stored file is: a message's photos, else a subject's, job's or conversation's.
OWNER = re.compile(r"^(subjects|jobs|conversations)/(\d+)/(?:messages/(\d+)/)?")


@dataclass
class RetentionReport:
    training_photos: int = 0
    images: int = 0
    messages: int = 0
    failed_jobs: int = 0
    failed_subjects: int = 0
    orphan_files: int = 0
    platform_events: int = 0
    files: int = 0  # stored files removed in all
    dry_run: bool = False

    def total(self) -> int:
        return sum(v for k, v in asdict(self).items() if k not in ("files", "dry_run"))

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        parts = [f"{k.replace('_', ' ')}: {v}" for k, v in asdict(self).items() if k != "dry_run"]
        return f"retention {verb} " + ", ".join(parts)


class _Files:
    """Every stored key, listed once and grouped by owner (listing a bucket is slow)."""

    def __init__(self, storage: Storage) -> None:
        self.by_owner: dict[tuple[str, int], list[str]] = defaultdict(list)
        for key in storage.list(""):
            if m := OWNER.match(key):
                owner = ("messages", int(m.group(3))) if m.group(3) else (m.group(1), int(m.group(2)))
                self.by_owner[owner].append(key)

    def of(self, kind: str, ids: list[int]) -> list[str]:
        return [k for i in ids for k in self.by_owner.get((kind, i), [])]


Step = Callable[[Session, Settings, _Files, RetentionReport, bool], list[str]]


def clean_up(settings: Settings, *, dry_run: bool = False) -> RetentionReport:
    """One pass; returns what was (or, dry run, would be) removed."""
    report = RetentionReport(dry_run=dry_run)
    storage = storage_from_settings(settings)
    files = _Files(storage)
    steps: list[Step] = [_training_photos, _images, _messages, _failed_leftovers, _platform_events]
    for step in steps:
        with session_scope(settings) as s:
            keys = step(s, settings, files, report, dry_run)
        report.files += _remove(storage, keys, dry_run)
    report.orphan_files = _remove(storage, _orphans(settings, files), dry_run)
    report.files += report.orphan_files
    if report.total() or report.files:
        log.info("%s", report)
    return report


def _ago(days: float) -> db_now:
    return db_now(-days * DAY)


def _busy(subject: Any) -> Any:
    """SQL: a queued or running job uses `subject` (its photos may still be read)."""
    active = Job.status.in_(ACTIVE_STATES)
    linked = exists().where(job_subjects.c.subject_id == subject, job_subjects.c.job_id == Job.id, active)
    return or_(exists().where(Job.subject_id == subject, active), linked)


def _training_photos(
    s: Session, settings: Settings, files: _Files, r: RetentionReport, dry: bool
) -> list[str]:
    if settings.retention_keep_training_photos:
        return []
    trained = select(Subject.id).where(
        Subject.status == "ready",
        Subject.artifact_key.is_not(None),
        Subject.keep_photos.is_(False),
        ~_busy(Subject.id),
    )
    rows = s.execute(select(Photo.id, Photo.storage_key).where(Photo.subject_id.in_(trained))).all()
    r.training_photos = len(rows)
    if not dry and rows:
        s.execute(delete(Photo).where(Photo.id.in_([row.id for row in rows])))
    return [row.storage_key for row in rows]


def _images(s: Session, settings: Settings, files: _Files, r: RetentionReport, dry: bool) -> list[str]:
    if not settings.retention_images_days:
        return []
    old = Image.created_at < _ago(settings.retention_images_days)
    rows = s.execute(select(Image.id, Image.storage_key).where(old)).all()
    r.images = len(rows)
    if not dry and rows:
        s.execute(delete(Image).where(Image.id.in_([row.id for row in rows])))
    return [row.storage_key for row in rows]


def _messages(s: Session, settings: Settings, files: _Files, r: RetentionReport, dry: bool) -> list[str]:
    if not settings.retention_conversation_days:
        return []
    old = ConversationMessage.created_at < _ago(settings.retention_conversation_days)
    ids = list(s.scalars(select(ConversationMessage.id).where(old)))
    r.messages = len(ids)
    if not dry and ids:
        s.execute(delete(ConversationMessage).where(ConversationMessage.id.in_(ids)))
    return files.of("messages", ids)


def _failed_leftovers(
    s: Session, settings: Settings, files: _Files, r: RetentionReport, dry: bool
) -> list[str]:
    if not settings.retention_failed_days:
        return []
    cutoff = _ago(settings.retention_failed_days)
    ended = select(Job.id).where(Job.status.in_(("failed", "cancelled")), Job.finished_at < cutoff)
    images = s.execute(select(Image.id, Image.job_id, Image.storage_key).where(Image.job_id.in_(ended))).all()
    keys = [row.storage_key for row in images]
    job_ids = list(s.scalars(ended))
    keys += files.of("jobs", job_ids)
    # Count only jobs that still had something to remove, so a quiet pass reports 0.
    r.failed_jobs = len({row.job_id for row in images} | {j for j in job_ids if files.of("jobs", [j])})
    if not dry and images:
        s.execute(delete(Image).where(Image.id.in_([row.id for row in images])))
    subjects = list(
        s.scalars(
            select(Subject.id).where(
                Subject.status == "failed",
                Subject.artifact_key.is_(None),
                Subject.updated_at < cutoff,
                ~_busy(Subject.id),
            )
        )
    )
    r.failed_subjects = len(subjects)
    if subjects:
        keys += s.scalars(select(Photo.storage_key).where(Photo.subject_id.in_(subjects)))
        keys += files.of("subjects", subjects)
        if not dry:
            s.execute(delete(Subject).where(Subject.id.in_(subjects)))  # photos and links cascade
    return keys


def _platform_events(
    s: Session, settings: Settings, files: _Files, r: RetentionReport, dry: bool
) -> list[str]:
    old = PlatformEvent.received_at < _ago(EVENT_DAYS)
    r.platform_events = s.scalar(select(func.count(PlatformEvent.id)).where(old)) or 0
    if not dry and r.platform_events:
        s.execute(delete(PlatformEvent).where(old))
    return []


def _orphans(settings: Settings, files: _Files) -> list[str]:
    """Files of a subject, job, conversation or message whose row no longer exists."""
    columns = {
        "subjects": Subject.id,
        "jobs": Job.id,
        "conversations": Conversation.id,
        "messages": ConversationMessage.id,
    }
    alive: set[tuple[str, int]] = set()
    with session_scope(settings) as s:
        for kind, column in columns.items():
            ids = [i for k, i in files.by_owner if k == kind]
            # Rows are committed before their files are written, so a live owner is never missed.
            for chunk in range(0, len(ids), 500):
                alive |= {
                    (kind, i) for i in s.scalars(select(column).where(column.in_(ids[chunk : chunk + 500])))
                }
    return [k for owner, keys in files.by_owner.items() if owner not in alive for k in keys]


def _remove(storage: Storage, keys: list[str], dry: bool) -> int:
    keys = list(dict.fromkeys(keys))
    if dry:
        return sum(1 for k in keys if storage.exists(k))
    removed = 0
    for key in keys:
        try:
            removed += bool(storage.delete(key))
        except Exception:  # one bad key must not stop the clean-up
            log.warning("retention: could not delete %r", key, exc_info=True)
    return removed
