"""The people's-data side of the conversation service: /forget with its confirmation, and
the Report button under images.

/forget answers first with what would be deleted and a `db:f:<token>` button; the token
names the scope (a subject id, or 0 for everything), an expiry and an HMAC over both and
the person's id, so only that person can press it, only for what they were shown, and only
for `FORGET_TTL` seconds. Nothing is stored for a pending confirmation.

Report (`db:x:<image_id>`, anyone may press it) hides the image for everyone at once and
queues it for the admins (`images.review = 'pending'`); the service then asks the adapter
to delete the chat message that carried it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from bot.cards import Button, forget_button_id, reports_whole_message
from core import forget as forgetting
from core.db import session_scope
from core.dbclock import db_now
from core.errors import UserFacingError
from core.models import Image
from core.settings import Settings

FORGET_TTL = 3600  # seconds a confirmation button stays valid


@dataclass
class Answer:
    text: str
    buttons: list[Button] = field(default_factory=list)
    delete_job_id: int | None = None


# -- /forget ------------------------------------------------------------------------------


def _mac(settings: Settings, user_id: int, scope: int, expires: int) -> str:
    key = settings.session_secret_value().encode()
    message = f"forget|{user_id}|{scope}|{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:20]


def forget_token(settings: Settings, user_id: int, subject_id: int | None, now: float | None = None) -> str:
    scope, expires = subject_id or 0, int((now or time.time()) + FORGET_TTL)
    return f"{scope}.{expires}.{_mac(settings, user_id, scope, expires)}"


def read_forget_token(settings: Settings, user_id: int, token: str, now: float | None = None) -> int | None:
    """The subject id the token confirms (None: everything); refuses a foreign or old one."""
    try:
        scope_s, expires_s, mac = token.split(".")
        scope, expires = int(scope_s), int(expires_s)
    except ValueError:
        raise UserFacingError("That confirmation button is broken; run /forget again.") from None
    if not hmac.compare_digest(mac, _mac(settings, user_id, scope, expires)):
        raise UserFacingError("That confirmation button isn't yours; run /forget yourself if you want to.")
    if (now or time.time()) > expires:
        raise UserFacingError("That confirmation has expired; run /forget again.")
    return scope or None


def ask_to_forget(settings: Settings, user_id: int, subject_name: str | None) -> Answer:
    """What /forget would delete, and the button that confirms it."""
    subject_id = forgetting.find_subject(settings, user_id, subject_name) if subject_name else None
    plan = forgetting.plan(settings, user_id, subject_id)
    what = f"“{subject_name.strip()}”" if subject_name else "everything I keep about you"
    text = (
        f"This permanently deletes {what}: {plan.summary()}. It can't be undone. "
        f"Press “Forget” within {FORGET_TTL // 60} minutes to confirm."
    )
    token = forget_token(settings, user_id, subject_id)
    return Answer(text, [Button("Forget", forget_button_id(token), "danger")])


def do_forget(settings: Settings, user_id: int, subject_id: int | None, platform: str) -> Answer:
    # The audit row names the person only by their internal id (gone with them) and says
    # they did it themselves; admins' deletions name the admin.
    plan = forgetting.forget(settings, user_id, subject_id, actor=f"self ({platform})")
    if plan.everything:
        return Answer(f"Done: I deleted everything I kept about you ({plan.summary()}).")
    return Answer(f"Done: I deleted that subject ({plan.summary()}).")


def forget_now(settings: Settings, user_id: int, subject_name: str | None, platform: str) -> Answer:
    subject_id = forgetting.find_subject(settings, user_id, subject_name) if subject_name else None
    return do_forget(settings, user_id, subject_id, platform)


# -- Report ---------------------------------------------------------------------------------


def report_image(settings: Settings, reporter_id: int, image_id: int) -> Answer:
    """Hide the image (or the whole message, see cards.reports_whole_message) for review."""
    with session_scope(settings) as s:
        image = s.get(Image, image_id)
        if image is None:
            return Answer("That picture is no longer here.")
        if image.review == "dismissed":
            return Answer("Thanks. An admin has already reviewed this picture and kept it.")
        if image.review == "pending":
            return Answer(
                "Thanks, that picture is already hidden and waiting for an admin.", [], image.job_id
            )
        siblings = s.scalar(select(func.count(Image.id)).where(Image.job_id == image.job_id)) or 1
        which = Image.job_id == image.job_id if reports_whole_message(siblings) else Image.id == image_id
        s.execute(
            update(Image)
            .where(which, Image.review.is_(None))
            .values(hidden_at=db_now(), reported_at=db_now(), review="pending", reported_by=reporter_id)
        )
        job_id = image.job_id
    return Answer("Thanks for telling us. I've hidden that picture and an admin will review it.", [], job_id)
