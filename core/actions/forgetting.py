"""Forgetting as a person does it (/forget, with its confirmation) and as an admin does it.

/forget answers first with what would be deleted and a token for the confirmation; the
token names the scope (a subject id, or 0 for everything), an expiry and an HMAC over both
and the person's id, so only that person can confirm, only what they were shown, and only
for `FORGET_TTL` seconds. Nothing is stored for a pending confirmation. The deleting
itself is `core.forget` (it writes the audit row).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from core import forget as forgetting
from core.actions.actor import Actor
from core.errors import UserFacingError
from core.settings import Settings

FORGET_TTL = 3600  # seconds a confirmation stays valid


@dataclass(frozen=True)
class ForgetQuestion:
    """What /forget would delete; the person confirms with `token` (a button carries it)."""

    text: str
    token: str


@dataclass(frozen=True)
class Forgotten:
    text: str
    plan: forgetting.ForgetPlan


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


def _subject_id(actor: Actor, subject_name: str | None) -> int | None:
    return forgetting.find_subject(actor.settings, actor.user_id, subject_name) if subject_name else None


def ask(actor: Actor, subject_name: str | None) -> ForgetQuestion:
    """What /forget [subject] would delete, and the token that confirms it."""
    subject_id = _subject_id(actor, subject_name)
    plan = forgetting.plan(actor.settings, actor.user_id, subject_id)
    what = f"“{subject_name.strip()}”" if subject_name else "everything I keep about you"
    text = (
        f"This permanently deletes {what}: {plan.summary()}. It can't be undone. "
        f"Press “Forget” within {FORGET_TTL // 60} minutes to confirm."
    )
    return ForgetQuestion(text, forget_token(actor.settings, actor.user_id, subject_id))


def _forget(actor: Actor, subject_id: int | None, via: str) -> Forgotten:
    # The audit row names the person only by their internal id (gone with them) and says
    # they did it themselves; admins' deletions name the admin.
    plan = forgetting.forget(actor.settings, actor.user_id, subject_id, actor=f"self ({via})")
    if plan.everything:
        return Forgotten(f"Done: I deleted everything I kept about you ({plan.summary()}).", plan)
    return Forgotten(f"Done: I deleted that subject ({plan.summary()}).", plan)


def confirm(actor: Actor, token: str, via: str) -> Forgotten:
    """The person confirmed a `ForgetQuestion` (`via`: the platform, for the audit row)."""
    return _forget(actor, read_forget_token(actor.settings, actor.user_id, token), via)


def forget_now(actor: Actor, subject_name: str | None, via: str) -> Forgotten:
    """/forget with its confirmation given at once."""
    return _forget(actor, _subject_id(actor, subject_name), via)


def forget_person(settings: Settings, user_id: int, admin: str) -> forgetting.ForgetPlan:
    """An admin deletes everything of a person (`NotFound` when there is none)."""
    return forgetting.forget(settings, user_id, actor=admin)
