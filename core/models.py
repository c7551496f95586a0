"""Database models (SQLAlchemy 2, typed). The `jobs` row is the source of truth.

Times are naive UTC written by the database's clock (`core.dbclock.db_now`), never by
a worker's, so leases and sweeps agree across hosts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.dbclock import db_now
from core.enums import ACTIVE_STATES as ACTIVE_STATES  # read from here by older callers
from core.enums import JobKind, JobState

# Stable constraint names so Alembic can alter them (SQLite batch mode needs names).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_KINDS = tuple(JobKind)
JOB_STATES = tuple(JobState)
WORKER_STATES = ("starting", "warming", "ready")  # gpu_worker.warmup
OUTBOX_STATES = ("pending", "posting", "posted", "failed")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


E = TypeVar("E", bound=StrEnum)


class EnumString(TypeDecorator[E]):
    """A VARCHAR holding a `StrEnum`'s value: written as the plain string (never the
    member, which a driver might adapt by its name), read back as the member. An
    unknown value is an error both ways: these are closed lists (`core.enums`)."""

    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[E], length: int) -> None:
        super().__init__(length)
        self.enum_class = enum_class  # named as the argument: part of the cache key

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_class(value)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime, server_default=db_now(), nullable=False)


class User(Base):
    """A person on one platform. Quota columns left NULL take the deployment defaults."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(128), default="")
    is_blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    trainings_per_day: Mapped[int | None] = mapped_column(Integer)
    images_per_day: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()

    subjects: Mapped[list[Subject]] = relationship(back_populates="owner")


class Subject(Base):
    """A trained (or training) concept owned by one person: `token class_noun`."""

    __tablename__ = "subjects"
    __table_args__ = (
        UniqueConstraint("owner_id", "token"),
        UniqueConstraint("owner_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(32))
    class_noun: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(256))
    method: Mapped[str] = mapped_column(String(16), default="lora")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    artifact_key: Mapped[str | None] = mapped_column(String(512))
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    # Consent for photos of a person: when, by whom (platform:user id) and what they
    # confirmed, as the uploader saw it. NULL: never confirmed (refused for people).
    consent_at: Mapped[datetime | None] = mapped_column(DateTime)
    consent_by: Mapped[str | None] = mapped_column(String(160))
    consent_text: Mapped[str | None] = mapped_column(Text)
    # Retention: training photos are deleted once the model is trained unless kept.
    keep_photos: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, server_default=db_now(), onupdate=db_now(), nullable=False
    )

    owner: Mapped[User] = relationship(back_populates="subjects")
    photos: Mapped[list[Photo]] = relationship(back_populates="subject", cascade="all, delete-orphan")


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # The square training crop [left, top, right, bottom] chosen by the photo coach
    # (core/photo_crop.py); NULL: the centre square.
    crop: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _now()

    subject: Mapped[Subject] = relationship(back_populates="photos")


class Conversation(Base):
    """Where to post: one record per platform conversation (channel + thread)."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "channel_id", "thread_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str] = mapped_column(String(64), default="")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    interaction_token: Mapped[str | None] = mapped_column(Text)
    interaction_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, server_default=db_now(), onupdate=db_now(), nullable=False
    )


job_subjects = Table(
    "job_subjects",
    Base.metadata,
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("subject_id", ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True),
)


class Job(Base):
    """One unit of GPU work. A Celery message only carries `id`; this row decides."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_kind", "status", "kind"),
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(EnumString(JobKind, 16))
    queue: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="SET NULL"), index=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    status: Mapped[JobState] = mapped_column(EnumString(JobState, 16), default=JobState.QUEUED)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # core.job_progress.JobProgress
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # core.job_results, by kind
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _now()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    subjects: Mapped[list[Subject]] = relationship(secondary=job_subjects)
    images: Mapped[list[Image]] = relationship(back_populates="job", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    seed: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # Moderation: a reported image is hidden for everyone at once and waits for an admin
    # (review "pending"); "dismissed" means an admin looked and put it back.
    hidden_at: Mapped[datetime | None] = mapped_column(DateTime)
    review: Mapped[str | None] = mapped_column(String(16), index=True)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime)
    reported_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()

    job: Mapped[Job] = relationship(back_populates="images")


class OutboxItem(Base):
    """One thing to post to a conversation: `pending -> posting -> posted`."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_state_created", "state", "created_at"),
        # delivery asks "does job N have its card / images row yet?" on every pass
        Index("ix_outbox_job_kind", "job_id", "kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # job_card | images | reply
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    platform_message_id: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    posted_at: Mapped[datetime | None] = mapped_column(DateTime)


class ConversationMessage(Base):
    __tablename__ = "conversation_messages"
    __table_args__ = (Index("ix_conversation_messages_conv_created", "conversation_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant | tool
    content: Mapped[str] = mapped_column(Text, default="")
    tool_calls: Mapped[list[Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _now()


class PlatformEvent(Base):
    """A platform event seen once; recorded before any work so retries are no-ops."""

    __tablename__ = "platform_events"
    __table_args__ = (UniqueConstraint("platform", "event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = _now()


class LLMUsage(Base):
    __tablename__ = "llm_usage"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=db_now(), index=True)


class Worker(Base):
    """A Celery worker process as it last reported itself (for doctor and the dashboard)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(128))
    queues: Mapped[str] = mapped_column(String(256))
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = _now()
    last_seen_at: Mapped[datetime] = _now()
    # Warm-up (gpu_worker.warmup): starting -> warming -> ready. A worker claims jobs only
    # once ready. Rows from before warm-ups existed were serving: they read as ready.
    state: Mapped[str] = mapped_column(String(16), default="starting", server_default="ready")
    warmup: Mapped[dict[str, Any]] = mapped_column(default=dict)  # device, what was warmed, seconds
    warming_at: Mapped[datetime | None] = mapped_column(DateTime)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime)


class AdminAccount(Base):
    __tablename__ = "admin_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = _now()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Session cookies carry the epoch they were issued in; logging out moves it on, which
    # ends every session of the account in every process, and survives restarts.
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")


class LoginFailure(Base):
    """A failed dashboard login, per key (client address or name): the rate limit's memory,
    shared by every bot process and kept across restarts."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime, server_default=db_now())


class AuditLog(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, server_default=db_now(), index=True)
