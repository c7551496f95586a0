"""People: a person is (platform, platform user id), created the first time they act.

One function for every surface that meets a person (chat adapters through the conversation
service, the CLI's own user), so "who is this" is answered the same way everywhere.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import insert_or_merge
from core.models import User


def person(session: Session, platform: str, platform_user_id: str, display_name: str | None) -> User:
    """The person with this platform identity, created (not blocked) on first contact. Safe
    against two first messages at once: the insert does nothing when the row exists."""
    session.execute(
        insert_or_merge(session, User)
        .values(
            platform=platform, platform_user_id=platform_user_id, display_name=display_name, is_blocked=False
        )
        .on_conflict_do_nothing()
    )
    user = session.scalar(
        select(User).where(User.platform == platform, User.platform_user_id == platform_user_id)
    )
    assert user is not None
    return user
