"""API access, the pure part: roles, what each may do, token secrets and their checks.

Roles form one table (``_GRANTS``): ``admin`` > ``operator`` > ``viewer`` is a
ladder (a stronger role may do what a weaker one may), ``vendor`` stands apart
and reaches only the routes that require ``vendor`` (an admin does not act as a
vendor: a vendor token is bound to one vendor's name, which an admin token
lacks). A token's secret is ``kf_`` + ``secrets.token_urlsafe(32)``; only its
SHA-256 is ever stored. ``token_problem`` decides whether a stored token may be
used now. No I/O here: no database, no clock (callers pass ``now``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from server.errors import AccessError

__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenRecord",
    "allows",
    "hash_secret",
    "looks_like_secret",
    "new_secret",
    "parse_expiry",
    "token_problem",
    "validate_token_fields",
]

TOKEN_PREFIX: Final = "kf_"  # noqa: S105 - the public prefix of every secret, not a secret
_SECRET_BYTES: Final = 32
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VENDOR: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # the TUF delegation's path prefix
_DURATION: Final = re.compile(r"(\d{1,5})([mhdw])")
_UNITS: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Role(StrEnum):
    ADMIN = "admin"  # everything, including tokens and the audit log
    OPERATOR = "operator"  # changes the fleet (decommission, rollouts, pre-authorisation)
    VIEWER = "viewer"  # reads the fleet and /metrics
    VENDOR = "vendor"  # publishes its own releases only


_GRANTS: Final[dict[Role, frozenset[Role]]] = {
    # required role -> the roles that satisfy it
    Role.VIEWER: frozenset({Role.VIEWER, Role.OPERATOR, Role.ADMIN}),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.ADMIN}),
    Role.ADMIN: frozenset({Role.ADMIN}),
    Role.VENDOR: frozenset({Role.VENDOR}),
}


def allows(granted: Role, required: Role) -> bool:
    """Whether a token of role ``granted`` may call a route that requires ``required``."""
    return granted in _GRANTS[required]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token, without its secret (only ``secret_hash`` is kept)."""

    name: str
    role: Role
    vendor: str | None
    secret_hash: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's (or console user's) name, role and vendor."""

    name: str
    role: Role
    vendor: str | None = None
    kind: str = "token"  # "token" (an API token) or "user" (a person in the console)

    @property
    def actor(self) -> str:
        """How the audit log names it: ``token:<name>`` or ``user:<name>``."""
        return f"{self.kind}:{self.name}"


def new_secret() -> str:
    """A fresh token secret: ``kf_`` + 43 URL-safe characters (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` has a token's shape (cheap check before any hashing or lookup)."""
    return value.startswith(TOKEN_PREFIX) and 20 <= len(value) <= 128


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of ``secret``: what is stored and looked up. A plain hash suffices
    (no salt, no slow KDF): the secret has 256 random bits, nothing to guess."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_problem(record: TokenRecord | None, now: datetime) -> str | None:
    """Why this token cannot be used at ``now`` (``unknown``, ``revoked``, ``expired``), or
    None when it can."""
    if record is None:
        return "unknown"
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return None


def validate_token_fields(name: str, role: Role, vendor: str | None) -> None:
    """Raises AccessError unless ``name`` is a token name (letters, digits, ``._-``, at most
    64) and ``vendor`` is given for, and only for, role ``vendor``."""
    if not _NAME.fullmatch(name):
        raise AccessError(
            "invalid_token", f"token name {name!r}: 1-64 of letters, digits, '.', '_', '-'"
        )
    if role is Role.VENDOR:
        if vendor is None or not _VENDOR.fullmatch(vendor):
            raise AccessError(
                "invalid_token", "a vendor token needs --vendor: 1-64 of a-z, 0-9, '_', '-'"
            )
    elif vendor is not None:
        raise AccessError("invalid_token", f"only a vendor token names a vendor, not {role}")


def parse_expiry(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``90m``, ``2w`` from ``now``, or an ISO-8601 time (UTC when it names
    no zone). Raises AccessError for anything else or a time not after ``now``."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        amount, unit = match.groups()
        at = now + timedelta(**{_UNITS[unit]: int(amount)})
    else:
        try:
            at = datetime.fromisoformat(text.strip())
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        except (ValueError, OverflowError):  # not a time, or one past year 9999 in UTC
            raise AccessError(
                "invalid_expiry", f"expiry {text!r}: use 30d, 12h, 90m, 2w or an ISO-8601 time"
            ) from None
    if at <= now:
        raise AccessError("invalid_expiry", f"expiry {text!r} is not in the future")
    return at
