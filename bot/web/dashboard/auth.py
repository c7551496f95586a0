"""Admin accounts, the session cookie, CSRF tokens and login rate limiting.

- Passwords: argon2id (argon2-cffi), rehashed on login when the parameters change.
- Session: a cookie signed with `settings.session_secret_value()` (itsdangerous), scoped
  to /admin, HttpOnly, SameSite=Lax, Secure when the request came over https, valid for
  12 hours. It carries the username, a random session id, the CSRF token and the
  account's session epoch; logout moves the epoch on (in the database), which ends every
  session of that admin, in every process and after restarts, and clears the cookie.
- CSRF: every form carries `csrf_token`; a POST whose token does not match the session's
  (or, for the login form, the signed pre-login cookie's) gets 403.
- Rate limit: failed logins per (account, source address) and per source address; after
  a few, that source waits, and each further failure doubles the wait (429 meanwhile).
  The account is never locked for everyone. Counted in the database, so every bot
  process sees the same attempts and a restart forgets none.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, func, select, update

from core.db import session_scope
from core.dbclock import db_now
from core.models import AdminAccount, LoginFailure
from core.settings import Settings

SESSION_COOKIE = "dreambot_admin"
LOGIN_CSRF_COOKIE = "dreambot_admin_login"
COOKIE_PATH = "/admin"
SESSION_MAX_AGE = 12 * 3600
USERNAME_MAX = 64

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both paths cost one argon2 check.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """Creating an admin account failed; the message says why."""


def create_admin(settings: Settings, username: str, password: str) -> None:
    """Add an admin account. Refuses a taken name, an odd name or a short password."""
    username = username.strip()
    if not username or len(username) > USERNAME_MAX or not username.isprintable() or " " in username:
        raise AccountError(f"An admin name needs 1–{USERNAME_MAX} printable characters and no spaces.")
    if len(password) < 10:
        raise AccountError("Choose a password of at least 10 characters.")
    with session_scope(settings) as session:
        if session.scalar(select(AdminAccount.id).where(AdminAccount.username == username)):
            raise AccountError(f"An admin named {username!r} already exists.")
        session.add(AdminAccount(username=username, password_hash=_hasher.hash(password)))


def authenticate(settings: Settings, username: str, password: str) -> bool:
    """True when the password is right; records the login time (database clock)."""
    with session_scope(settings) as session:
        account = session.scalar(select(AdminAccount).where(AdminAccount.username == username))
        stored = account.password_hash if account else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
        if account is None:
            return False
        values: dict[str, object] = {"last_login_at": db_now()}
        if _hasher.check_needs_rehash(stored):
            values["password_hash"] = _hasher.hash(password)
        session.execute(update(AdminAccount).where(AdminAccount.id == account.id).values(**values))
        return True


def session_epoch(settings: Settings, username: str) -> int | None:
    """The account's current session epoch; None when there is no such account."""
    with session_scope(settings) as session:
        return session.scalar(select(AdminAccount.session_epoch).where(AdminAccount.username == username))


def end_sessions(settings: Settings, username: str) -> None:
    """Log `username` out everywhere: cookies of earlier epochs stop working."""
    with session_scope(settings) as session:
        session.execute(
            update(AdminAccount)
            .where(AdminAccount.username == username)
            .values(session_epoch=AdminAccount.session_epoch + 1)
        )


# -- rate limiting --------------------------------------------------------------------


@dataclass(frozen=True)
class LimitKey:
    key: str
    free: int  # failures before any wait


class LoginLimiter:
    """Failed logins with a growing wait, kept in the database (`login_failures`): every
    bot process counts the same attempts, and a restart does not forget them.

    Failures count per (account, source) and per source. After `free` failures a key
    waits `first_wait` seconds from its latest failure, and every further failure doubles
    that, up to `max_wait`. The account itself is never locked: a person guessing from one
    address slows only that address, and the admin logs in from another. Failures are
    forgotten after `forget` seconds, and those of (account, source) on a good login.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        free_per_account: int = 5,
        free_per_source: int = 20,
        first_wait: float = 15.0,
        max_wait: float = 3600.0,
        forget: float = 86400.0,
    ) -> None:
        self.settings = settings
        self.free_per_account = free_per_account
        self.free_per_source = free_per_source
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.forget = forget

    def keys(self, username: str, source: str) -> tuple[LimitKey, LimitKey]:
        account = LimitKey(f"user:{username.lower()}@{source}"[:200], self.free_per_account)
        return account, LimitKey(f"ip:{source}"[:200], self.free_per_source)

    def wait_after(self, failures: int, free: int) -> float:
        """Seconds to wait after the latest of `failures` (0 while within `free`)."""
        if failures < free:
            return 0.0
        return min(self.max_wait, self.first_wait * 2 ** min(failures - free, 32))

    def retry_after(self, *keys: LimitKey) -> int:
        """Seconds until another attempt is allowed for all `keys` (0: allowed now)."""
        wait = 0.0
        with session_scope(self.settings) as session:
            now = session.scalar(select(db_now()))
            for limit in keys:
                latest, count = session.execute(
                    select(func.max(LoginFailure.at), func.count()).where(
                        LoginFailure.key == limit.key, LoginFailure.at >= db_now(-self.forget)
                    )
                ).one()
                if latest is not None and now is not None:
                    remaining = self.wait_after(count, limit.free) - (now - latest).total_seconds()
                    wait = max(wait, remaining)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, *keys: LimitKey) -> None:
        with session_scope(self.settings) as session:
            session.execute(delete(LoginFailure).where(LoginFailure.at < db_now(-self.forget)))
            session.add_all(LoginFailure(key=limit.key) for limit in keys)

    def succeeded(self, account: LimitKey) -> None:
        """A good login forgets that account's failures from this source (not the source's)."""
        with session_scope(self.settings) as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == account.key))


# -- the dashboard's per-app state ------------------------------------------------------


@dataclass
class DashboardState:
    settings: Settings
    limiter: LoginLimiter = field(init=False)
    # Set at start-up when the console's database role may not run it (console_role.py).
    console_off: str | None = None

    def __post_init__(self) -> None:
        self.limiter = LoginLimiter(self.settings)

    def serializer(self, purpose: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.settings.session_secret_value(), salt=f"dreambot-admin-{purpose}")


def state_of(request: Request) -> DashboardState:
    return request.app.state.dashboard


@dataclass(frozen=True)
class AdminSession:
    username: str
    session_id: str
    csrf_token: str


def new_session_cookie(state: DashboardState, username: str) -> str:
    data = {
        "u": username,
        "sid": secrets.token_urlsafe(16),
        "csrf": secrets.token_urlsafe(24),
        "e": session_epoch(state.settings, username) or 0,
    }
    return state.serializer("session").dumps(data)


def read_session(request: Request) -> AdminSession | None:
    state = state_of(request)
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = state.serializer("session").loads(raw, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    session = AdminSession(username=str(data["u"]), session_id=str(data["sid"]), csrf_token=str(data["csrf"]))
    # A deleted account, or one logged out since this cookie was issued, has no session.
    epoch = session_epoch(state.settings, session.username)
    return session if epoch is not None and epoch == data.get("e") else None


def cookie_options(request: Request, max_age: int | None) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": request.url.scheme == "https",
        "path": COOKIE_PATH,
        "max_age": max_age,
    }


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(expected, given)


def require_admin(request: Request) -> AdminSession:
    """Pages: redirect to the login page without a session. API: 401."""
    session = read_session(request)
    if session is not None:
        return session
    if request.url.path.startswith("/admin/api/"):
        raise HTTPException(401, "log in at /admin/login first")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise HTTPException(303, "log in first", headers={"Location": f"/admin/login?next={_quote(target)}"})


async def require_admin_post(request: Request) -> AdminSession:
    """A state-changing request: a session *and* the form's CSRF token (else 403)."""
    session = require_admin(request)
    form = await request.form()
    token = form.get("csrf_token")
    if not tokens_match(session.csrf_token, token if isinstance(token, str) else None):
        raise HTTPException(403, "This form has expired or did not come from the dashboard; reload the page.")
    return session


def _quote(path: str) -> str:
    return quote(path, safe="/")


Admin = Annotated[AdminSession, Depends(require_admin)]
AdminPost = Annotated[AdminSession, Depends(require_admin_post)]
