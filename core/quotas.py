"""Per-person quotas and the deployment-wide daily LLM spend cap.

Checked in code at submit time, whatever the agent or a command asked for. A person's
own limits (set by an admin) override the deployment defaults from settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.dbclock import db_now
from core.errors import Blocked, LLMBudgetExceeded, NotFound, QuotaExceeded
from core.models import ACTIVE_STATES, Job, LLMUsage, User
from core.settings import Settings

DAY = 24 * 3600.0


@dataclass(frozen=True)
class Usage:
    """What a person is using now against their limits (shown by /quota)."""

    active_jobs: int
    max_concurrent_jobs: int
    trainings_today: int
    trainings_per_day: int
    images_today: int
    images_per_day: int


def _limit(own: int | None, default: int) -> int:
    return default if own is None else own


def usage(session: Session, settings: Settings, user: User) -> Usage:
    since = db_now(-DAY)
    active = session.scalar(
        select(func.count()).where(Job.owner_id == user.id, Job.status.in_(ACTIVE_STATES))
    )
    trainings = session.scalar(
        select(func.count()).where(
            Job.owner_id == user.id,
            Job.kind == "train",
            Job.created_at >= since,
            Job.status != "failed",
        )
    )
    sample_jobs: Sequence[dict[str, Any] | None] = session.scalars(
        select(Job.params).where(
            Job.owner_id == user.id,
            Job.kind == "sample",
            Job.created_at >= since,
            Job.status != "failed",
        )
    ).all()
    images = sum(int((p or {}).get("n", 1)) for p in sample_jobs)
    return Usage(
        active_jobs=active or 0,
        max_concurrent_jobs=_limit(user.max_concurrent_jobs, settings.max_concurrent_jobs),
        trainings_today=trainings or 0,
        trainings_per_day=_limit(user.trainings_per_day, settings.trainings_per_day),
        images_today=images,
        images_per_day=_limit(user.images_per_day, settings.images_per_day),
    )


def check_job_quota(session: Session, settings: Settings, user_id: int, kind: str, n_images: int = 1) -> None:
    """Raise a `UserFacingError` if `user_id` may not start this job now."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("I don't know you yet; say hello first.")
    if user.is_blocked:
        raise Blocked("Sorry, your account can't start new jobs. Ask an admin if this is a mistake.")
    u = usage(session, settings, user)
    if u.active_jobs >= u.max_concurrent_jobs:
        raise QuotaExceeded(
            f"You already have {u.active_jobs} job(s) running or queued (limit "
            f"{u.max_concurrent_jobs}). Wait for one to finish or /cancel it."
        )
    if kind == "train" and u.trainings_today >= u.trainings_per_day:
        raise QuotaExceeded(f"You've used all {u.trainings_per_day} trainings for today; try again tomorrow.")
    if kind == "sample" and u.images_today + n_images > u.images_per_day:
        left = max(0, u.images_per_day - u.images_today)
        raise QuotaExceeded(
            f"That's {n_images} image(s) but you have {left} left today (limit {u.images_per_day} a day)."
        )


def llm_spend_today(session: Session) -> float:
    total = session.scalar(
        select(func.coalesce(func.sum(LLMUsage.cost_usd), 0.0)).where(LLMUsage.created_at >= db_now(-DAY))
    )
    return float(total or 0.0)


def check_llm_budget(session: Session, settings: Settings) -> None:
    """Raise `LLMBudgetExceeded` once the deployment spent its daily LLM cap."""
    if llm_spend_today(session) >= settings.llm_daily_spend_cap_usd:
        raise LLMBudgetExceeded(
            "I've reached today's budget for thinking, so I can't chat until tomorrow. /imagine still works."
        )
