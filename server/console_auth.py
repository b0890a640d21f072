"""Console login, the pure part: password hashes, session secrets, and whether a session
may be used now.

People log in to the console (``server.console``) with a username and a password; machines
keep their API tokens (``server.access``). A password is stored only as an argon2id hash
(argon2-cffi's defaults, RFC 9106's second recommended profile). A session's secret is
``secrets.token_urlsafe(32)`` in the cookie; only its SHA-256 is stored (256 random bits:
nothing to guess, so no slow hash). ``session_problem`` decides whether a stored session
is still good at ``now`` (idle and absolute expiry), ``touch_due`` whether a request
counts as use (a page's automatic refresh does not). No I/O here: no database, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from server.access import Role
from server.errors import AccessError

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "TOUCH_EVERY",
    "SessionRecord",
    "UserRecord",
    "csrf_matches",
    "hash_password",
    "hash_session_secret",
    "new_session_secret",
    "password_matches",
    "session_problem",
    "touch_due",
    "validate_password",
    "validate_username",
]

MIN_PASSWORD_LENGTH: Final = 12
_MAX_PASSWORD_LENGTH: Final = 1024  # argon2 hashes any length; a bound keeps a login cheap
_USERNAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HASHER: Final = PasswordHasher()
_DUMMY_HASH: Final = _HASHER.hash("not a password of anyone")
TOUCH_EVERY: Final = timedelta(seconds=30)
"""A session's last use is rewritten at most this often (one UPDATE per session per 30 s)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A console user, without the password (only ``password_hash`` is kept)."""

    username: str
    role: Role
    password_hash: str
    created_at: datetime
    created_by: str
    disabled_at: datetime | None = None
    language: str | None = None  # the user's choice; None: the browser's Accept-Language


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored console session (the secret itself is only in the browser's cookie)."""

    secret_hash: str
    username: str
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    source: str | None = None


def validate_username(username: str) -> None:
    """Raises AccessError(``invalid_user``) unless 1-64 of a-z, 0-9, ``._-``."""
    if not _USERNAME.fullmatch(username):
        raise AccessError("invalid_user", f"username {username!r}: 1-64 of a-z, 0-9, '.', '_', '-'")


def validate_password(password: str) -> None:
    """Raises AccessError(``weak_password``) for fewer than 12 or more than 1024 characters."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD_LENGTH:
        raise AccessError(
            "weak_password",
            f"a password needs {MIN_PASSWORD_LENGTH} to {_MAX_PASSWORD_LENGTH} characters",
        )


def hash_password(password: str) -> str:
    """The argon2id hash to store. Raises AccessError for a password ``validate_password``
    refuses."""
    validate_password(password)
    return _HASHER.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` is the one hashed in ``password_hash``. With None (no such
    user) a dummy hash is checked all the same, so that an unknown username takes as long
    to refuse as a wrong password."""
    if len(password) > _MAX_PASSWORD_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_session_secret() -> str:
    """A fresh session secret (256 random bits, URL-safe): the cookie's value."""
    return secrets.token_urlsafe(32)


def hash_session_secret(secret: str) -> str:
    """The hex SHA-256 of a session secret: what is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_matches(expected: str, sent: str | None) -> bool:
    """Whether a form's CSRF token is the session's (constant-time comparison)."""
    return sent is not None and hmac.compare_digest(expected.encode(), sent.encode())


def session_problem(
    session: SessionRecord | None,
    user: UserRecord | None,
    now: datetime,
    *,
    idle: timedelta,
    absolute: timedelta,
) -> str | None:
    """Why this session cannot be used at ``now`` (``unknown``, ``idle``, ``expired``,
    ``disabled``), or None when it can."""
    if session is None or user is None:
        return "unknown"
    if user.disabled_at is not None:
        return "disabled"
    if now - session.created_at >= absolute:
        return "expired"
    if now - session.last_seen_at >= idle:
        return "idle"
    return None


def touch_due(session: SessionRecord, now: datetime, *, passive: bool) -> bool:
    """Whether a request at ``now`` moves the session's last use (and so its idle end):
    never for a ``passive`` one (a page refreshing itself, no person behind it), else once
    ``TOUCH_EVERY`` has passed since the last. Passive requests are served while the
    session is good (``session_problem``) but keep no forgotten tab's session alive."""
    return not passive and now - session.last_seen_at >= TOUCH_EVERY
