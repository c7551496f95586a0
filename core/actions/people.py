"""People: a person is (platform, platform user id), created the first time they act.

Meeting a person (`person`, `known_person`), what they use today (`usage`), and what an
admin changes about them (`set_blocked`, `set_quotas`). One function for every surface
that meets a person (chat adapters through the conversation service, the CLI's own
user, the dashboard), so "who is this" is answered the same way everywhere.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.actions.actor import Actor
from core.db import get_or_insert, rows_changed, session_scope
from core.errors import NotFound
from core.models import User
from core.quotas import Usage
from core.quotas import usage as usage_of
from core.settings import Settings

QUOTA_FIELDS = ("max_concurrent_jobs", "trainings_per_day", "images_per_day")


class QuotaLimits(BaseModel):
    """A person's own limits; None: the deployment's default (settings)."""

    model_config = ConfigDict(frozen=True)

    max_concurrent_jobs: int | None = Field(None, ge=0, le=1_000_000)
    trainings_per_day: int | None = Field(None, ge=0, le=1_000_000)
    images_per_day: int | None = Field(None, ge=0, le=1_000_000)


def person(session: Session, platform: str, platform_user_id: str, display_name: str | None) -> User:
    """The person with this platform identity, created (not blocked) on first contact."""
    identity = {"platform": platform, "platform_user_id": platform_user_id}
    return get_or_insert(session, User, identity, {"display_name": display_name, "is_blocked": False})


def known_person(settings: Settings, platform: str, platform_user_id: str) -> int | None:
    """The person's id without creating them (forgetting must not add a row); None: unknown."""
    with session_scope(settings) as s:
        return s.scalar(
            select(User.id).where(User.platform == platform, User.platform_user_id == platform_user_id)
        )


def usage(actor: Actor) -> Usage:
    """What the person uses today against their limits (/quota, the agent's my_quota)."""
    with session_scope(actor.settings) as session:
        user = session.get(User, actor.user_id)
        if user is None:
            raise NotFound("This person is not known yet.")
        return usage_of(session, actor.settings, user)


# -- an admin's ----------------------------------------------------------------------------


def _update_person(settings: Settings, user_id: int, **values: object) -> None:
    with session_scope(settings) as session:
        if rows_changed(session, update(User).where(User.id == user_id).values(**values)) != 1:
            raise NotFound(f"There is no person #{user_id}.")


def set_blocked(settings: Settings, user_id: int, blocked: bool) -> None:
    """Block (no new jobs, no chat) or unblock a person; `NotFound` when there is none."""
    _update_person(settings, user_id, is_blocked=blocked)


def set_quotas(settings: Settings, user_id: int, limits: QuotaLimits) -> None:
    """Set the person's own limits (None: back to the default); `NotFound` when there is none."""
    _update_person(settings, user_id, **limits.model_dump())
