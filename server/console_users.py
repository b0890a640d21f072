"""Console users as the CLI (``kioskfleet user``) and the console's admin pages change them:
create with a role, set a new password, disable, enable.

``ConsoleUsers`` joins the rules of ``server.console_auth`` (username and password checks,
argon2 hashing) to the repository (``server.console_store``) and a clock, once for both
callers. It audits nothing itself: the CLI records its entry with actor ``cli:<user>``,
the console's routes through the API's audit middleware. A password never leaves here
except as its hash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from server.access import Role
from server.console_auth import UserRecord, hash_password, validate_username
from server.console_store import ConsoleStore
from server.errors import AccessError

__all__ = ["CONSOLE_ROLES", "ConsoleUsers"]

CONSOLE_ROLES: tuple[Role, ...] = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
"""The roles a console user may have (vendors publish with tokens, not in the console)."""


class ConsoleUsers:
    """User changes over ``store``; ``clock`` gives aware UTC times. Every method raises
    AccessError (``invalid_user``, ``weak_password``, ``user_exists``, ``no_such_user``)
    and StorageError."""

    def __init__(self, store: ConsoleStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    def create(self, username: str, role: Role, password: str, *, actor: str) -> UserRecord:
        """A new user named ``username`` with ``role``."""
        validate_username(username)
        if role not in CONSOLE_ROLES:
            raise AccessError("invalid_user", "vendors publish with tokens, not in the console")
        record = UserRecord(
            username=username,
            role=role,
            password_hash=hash_password(password),
            created_at=self._clock(),
            created_by=actor,
        )
        self._store.create_user(record)
        return record

    def set_password(self, username: str, password: str) -> None:
        """Replace ``username``'s password; its sessions end."""
        validate_username(username)
        if self._store.user(username) is None:
            raise AccessError("no_such_user", f"no console user named {username!r}")
        self._store.update_user(username, password_hash=hash_password(password))

    def disable(self, username: str) -> None:
        """Refuse ``username``'s logins from now on; its sessions end."""
        validate_username(username)
        self._store.update_user(username, disabled_at=self._clock())

    def enable(self, username: str) -> None:
        """Let a disabled ``username`` log in again."""
        validate_username(username)
        self._store.update_user(username, disabled_at=None)
