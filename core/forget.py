"""Forgetting: one subject, or everything of one person, from the database and storage.

`plan` says what would go (shown to the person before they confirm); `forget` does it
and writes one audit row (what, when, by whom: counts and ids, never names, prompts or
messages). Rows are deleted first, then files, so a crash in between leaves orphan files
(removed by `core.retention`'s orphan sweep), never a row pointing at a missing file.

What belongs to a person: their user row, subjects (photos, trained models, checkpoints:
`subjects/{id}/…`), jobs (images, outbox rows: `jobs/{id}/…`), chat messages and the
photos attached to them (`conversations/{cid}/messages/{mid}/…`), conversations only they
used (`conversations/{cid}/…`), and their LLM usage rows. A conversation other people
also spoke in stays, without its link to them. Reports they made stay, anonymous.
Active jobs are cancelled first; a worker still writing finds its lease gone.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core import jobs as job_lifecycle
from core.db import session_scope
from core.errors import NotFound
from core.models import (
    ACTIVE_STATES,
    AuditLog,
    Conversation,
    ConversationMessage,
    Image,
    Job,
    LLMUsage,
    OutboxItem,
    Photo,
    Subject,
    User,
    job_subjects,
)
from core.settings import Settings
from core.storage import Storage, storage_from_settings

log = logging.getLogger(__name__)


@dataclass
class ForgetPlan:
    """Everything one forget will delete (ids, so the same plan can be carried out)."""

    user_id: int
    subject_id: int | None  # None: everything of the person
    subjects: list[int] = field(default_factory=list)
    photos: int = 0
    models: int = 0
    jobs: list[int] = field(default_factory=list)
    active_jobs: list[int] = field(default_factory=list)
    images: int = 0
    messages: list[tuple[int, int]] = field(default_factory=list)  # (conversation id, message id)
    own_conversations: list[int] = field(default_factory=list)  # deleted with everything in them
    shared_conversations: list[int] = field(default_factory=list)  # kept, unlinked from the person
    llm_usage: int = 0
    files_removed: int = 0

    @property
    def everything(self) -> bool:
        return self.subject_id is None

    def counts(self) -> dict[str, int]:
        return {
            "subjects": len(self.subjects),
            "photos": self.photos,
            "models": self.models,
            "jobs": len(self.jobs),
            "images": self.images,
            "messages": len(self.messages),
            "conversations": len(self.own_conversations),
            "llm_usage": self.llm_usage,
        }

    def summary(self) -> str:
        """What will go, in words a person reads before confirming."""
        parts = []
        if self.subjects:
            n = len(self.subjects)
            parts.append(
                f"{n} subject{'s' * (n != 1)} with {self.photos} training photo{'s' * (self.photos != 1)}"
                f" and {self.models} trained model{'s' * (self.models != 1)}"
            )
        if self.images:
            parts.append(f"{self.images} generated picture{'s' * (self.images != 1)}")
        if self.jobs:
            parts.append(f"{len(self.jobs)} job record{'s' * (len(self.jobs) != 1)}")
        if self.messages:
            parts.append(f"{len(self.messages)} chat message{'s' * (len(self.messages) != 1)}")
        if self.everything:
            parts.append("your account record")
        return ", ".join(parts) if parts else "nothing"


def find_subject(settings: Settings, user_id: int, name: str) -> int:
    """The id of the person's subject called `name` (any case); `NotFound` lists theirs."""
    with session_scope(settings) as s:
        mine = list(s.scalars(select(Subject).where(Subject.owner_id == user_id).order_by(Subject.id)))
    for subject in mine:
        if subject.name.lower() == name.strip().lower():
            return subject.id
    names = ", ".join(f"“{s.name}”" for s in mine) or "none yet"
    raise NotFound(f"You have no subject called “{name.strip()}”. Your subjects: {names}.")


def plan(settings: Settings, user_id: int, subject_id: int | None = None) -> ForgetPlan:
    with session_scope(settings) as s:
        return _plan(s, user_id, subject_id)


def _plan(s: Session, user_id: int, subject_id: int | None) -> ForgetPlan:
    if s.get(User, user_id) is None:
        raise NotFound("I have nothing stored about you.")
    out = ForgetPlan(user_id, subject_id)
    subjects = select(Subject.id).where(Subject.owner_id == user_id)
    if subject_id is not None:
        subjects = subjects.where(Subject.id == subject_id)
    out.subjects = list(s.scalars(subjects.order_by(Subject.id)))
    if subject_id is not None and not out.subjects:
        raise NotFound(f"There is no subject #{subject_id} of yours.")
    if out.subjects:
        out.photos = len(list(s.scalars(select(Photo.id).where(Photo.subject_id.in_(out.subjects)))))
        out.models = len(
            list(
                s.scalars(
                    select(Subject.id).where(Subject.id.in_(out.subjects), Subject.artifact_key.is_not(None))
                )
            )
        )
    jobs = select(Job.id, Job.status).where(Job.owner_id == user_id)
    if subject_id is not None:
        uses = select(job_subjects.c.job_id).where(job_subjects.c.subject_id == subject_id)
        jobs = jobs.where(or_(Job.subject_id == subject_id, Job.id.in_(uses)))
    rows = s.execute(jobs.order_by(Job.id)).all()
    out.jobs = [r.id for r in rows]
    out.active_jobs = [r.id for r in rows if r.status in ACTIVE_STATES]
    if out.jobs:
        out.images = len(list(s.scalars(select(Image.id).where(Image.job_id.in_(out.jobs)))))
    if subject_id is None:
        out.messages = [
            (r.conversation_id, r.id)
            for r in s.execute(
                select(ConversationMessage.conversation_id, ConversationMessage.id).where(
                    ConversationMessage.user_id == user_id
                )
            )
        ]
        for conv_id in s.scalars(select(Conversation.id).where(Conversation.user_id == user_id)):
            others = s.scalar(
                select(ConversationMessage.id).where(
                    ConversationMessage.conversation_id == conv_id,
                    or_(ConversationMessage.user_id != user_id, ConversationMessage.user_id.is_(None)),
                )
            ) or s.scalar(
                select(Job.id).where(
                    Job.conversation_id == conv_id, or_(Job.owner_id != user_id, Job.owner_id.is_(None))
                )
            )
            (out.shared_conversations if others else out.own_conversations).append(conv_id)
        out.llm_usage = len(list(s.scalars(select(LLMUsage.id).where(LLMUsage.user_id == user_id))))
    return out


def forget(settings: Settings, user_id: int, subject_id: int | None = None, *, actor: str) -> ForgetPlan:
    """Delete what `plan` lists, rows then files; audit it. Returns the plan carried out."""
    first = plan(settings, user_id, subject_id)
    for job_id in first.active_jobs:  # stop the workers before their rows go
        with contextlib.suppress(NotFound):
            job_lifecycle.request_cancel(settings, job_id)
    storage = storage_from_settings(settings)
    with session_scope(settings) as s:
        done = _plan(s, user_id, subject_id)  # again: jobs may have started meanwhile
        keys = _delete_rows(s, done)
    done.files_removed = _delete_files(storage, done, keys)
    with session_scope(settings) as s:
        s.add(
            AuditLog(
                actor=actor[:128],
                action="forget.person" if done.everything else "forget.subject",
                target=f"user:{user_id}" if done.everything else f"subject:{subject_id}",
                details={**done.counts(), "files_removed": done.files_removed, "user_id": user_id},
            )
        )
    log.info("forgot %s of user %s for %s: %s", "everything" if done.everything else "a subject",
             user_id, actor, done.counts())  # fmt: skip
    return done


def _delete_rows(s: Session, p: ForgetPlan) -> list[str]:
    """Delete the plan's rows in one transaction; returns stored keys the rows pointed at."""
    keys: list[str] = []
    if p.jobs:
        keys += s.scalars(select(Image.storage_key).where(Image.job_id.in_(p.jobs)))
        s.execute(delete(OutboxItem).where(OutboxItem.job_id.in_(p.jobs)))
        s.execute(delete(Image).where(Image.job_id.in_(p.jobs)))
        s.execute(delete(job_subjects).where(job_subjects.c.job_id.in_(p.jobs)))
        s.execute(delete(Job).where(Job.id.in_(p.jobs)))
    if p.subjects:
        keys += s.scalars(select(Photo.storage_key).where(Photo.subject_id.in_(p.subjects)))
        keys += [
            k
            for k in s.scalars(select(Subject.artifact_key).where(Subject.id.in_(p.subjects)))
            if k is not None
        ]
        s.execute(delete(Photo).where(Photo.subject_id.in_(p.subjects)))
        s.execute(delete(job_subjects).where(job_subjects.c.subject_id.in_(p.subjects)))
        s.execute(update(Job).where(Job.subject_id.in_(p.subjects)).values(subject_id=None))
        s.execute(delete(Subject).where(Subject.id.in_(p.subjects)))
    if p.everything:
        uid = p.user_id
        s.execute(delete(ConversationMessage).where(ConversationMessage.user_id == uid))
        s.execute(delete(LLMUsage).where(LLMUsage.user_id == uid))
        s.execute(update(Image).where(Image.reported_by == uid).values(reported_by=None))
        if p.shared_conversations:
            s.execute(
                update(Conversation)
                .where(Conversation.id.in_(p.shared_conversations))
                .values(user_id=None, interaction_token=None, interaction_expires_at=None)
            )
        if p.own_conversations:
            own = p.own_conversations
            s.execute(delete(OutboxItem).where(OutboxItem.conversation_id.in_(own)))
            s.execute(delete(ConversationMessage).where(ConversationMessage.conversation_id.in_(own)))
            s.execute(update(LLMUsage).where(LLMUsage.conversation_id.in_(own)).values(conversation_id=None))
            s.execute(update(Job).where(Job.conversation_id.in_(own)).values(conversation_id=None))
            s.execute(delete(Conversation).where(Conversation.id.in_(own)))
        s.execute(delete(User).where(User.id == uid))
    return keys


def _delete_files(storage: Storage, p: ForgetPlan, keys: list[str]) -> int:
    prefixes = [f"subjects/{sid}/" for sid in p.subjects] + [f"jobs/{jid}/" for jid in p.jobs]
    prefixes += [f"conversations/{cid}/messages/{mid}/" for cid, mid in p.messages]
    prefixes += [f"conversations/{cid}/" for cid in p.own_conversations]
    removed = 0
    for key in keys:  # keys outside the usual prefixes (older layouts) go too
        try:
            removed += bool(storage.delete(key))
        except Exception:  # a bad key in a row must not stop the rest of the deletion
            log.warning("forget: could not delete %r", key, exc_info=True)
    for prefix in prefixes:
        removed += storage.delete_prefix(prefix)
    return removed
