"""Where console users and sessions hit the disk: tables ``console_user`` and
``console_session``.

``ConsoleStore`` is the repository over them on the server's database (it borrows
``Storage``'s engine and error translation: every SQLAlchemy error leaves as
``StorageError``). A user row holds the argon2 hash of the password, never the password; a
session row the SHA-256 of the cookie's secret, never the secret. Decisions (is this
password right, may this session be used) are ``server.console_auth``'s.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlmodel import Field

from server.access import Role
from server.console_auth import SessionRecord, UserRecord
from server.errors import AccessError, StorageDataError
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = ["ConsoleSessionRow", "ConsoleStore", "ConsoleUserRow"]


def _ts(nullable: bool = False) -> Any:
    return Field(sa_column=sa.Column(UtcDateTime(), nullable=nullable))


def _text(length: int, nullable: bool = True, **kw: Any) -> Any:
    return Field(sa_column=sa.Column(sa.String(length), nullable=nullable, **kw))


class ConsoleUserRow(ServerTable, table=True):
    """One person who may log in to the console: name, role, argon2 hash, language."""

    __tablename__ = "console_user"

    username: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    role: str = _text(16, nullable=False)
    password_hash: str = _text(256, nullable=False)
    created_at: datetime = _ts()
    created_by: str = _text(128, nullable=False)
    disabled_at: datetime | None = _ts(nullable=True)
    language: str | None = _text(16)


class ConsoleSessionRow(ServerTable, table=True):
    """One logged-in browser: the SHA-256 of its cookie secret, its user, its CSRF token."""

    __tablename__ = "console_session"
    __table_args__ = (sa.Index("ix_console_session_username", "username"),)

    secret_hash: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    username: str = _text(64, nullable=False)
    csrf_token: str = _text(64, nullable=False)
    created_at: datetime = _ts()
    last_seen_at: datetime = _ts()
    source: str | None = _text(64)


_USER: Final = ServerTable.metadata.tables["console_user"]
_SESSION: Final = ServerTable.metadata.tables["console_session"]
_USER_FIELDS: Final = tuple(UserRecord.__slots__)
_SESSION_FIELDS: Final = tuple(SessionRecord.__slots__)


def _user(row: sa.RowMapping) -> UserRecord:
    values = {name: row[name] for name in _USER_FIELDS}
    values["role"] = Role(values["role"])
    return UserRecord(**values)


class ConsoleStore:
    """Console users and sessions on ``storage``'s database (which must be open)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    # --- users ----------------------------------------------------------------------------

    def create_user(self, record: UserRecord) -> None:
        """Raises AccessError(``user_exists``), StorageError."""
        try:
            with self._storage.begin("create console user") as conn:
                conn.execute(
                    sa.insert(_USER), {name: getattr(record, name) for name in _USER_FIELDS}
                )
        except StorageDataError:
            if self.user(record.username) is not None:
                raise AccessError(
                    "user_exists", f"a user named {record.username!r} exists"
                ) from None
            raise

    def user(self, username: str) -> UserRecord | None:
        """Raises StorageError."""
        with self._storage.connect("read console user") as conn:
            row = conn.execute(sa.select(_USER).where(_USER.c.username == username)).mappings()
            first = row.first()
        return None if first is None else _user(first)

    def users(self) -> list[UserRecord]:
        """Every user, disabled ones too, by name. Raises StorageError."""
        with self._storage.connect("list console users") as conn:
            rows = conn.execute(sa.select(_USER).order_by(_USER.c.username)).mappings()
            return [_user(row) for row in rows]

    def update_user(self, username: str, **values: Any) -> None:
        """Set ``password_hash``, ``disabled_at``, ``role`` or ``language``; a password change
        or a disabling also ends every session of the user.

        Raises AccessError(``no_such_user``), StorageError."""
        with self._storage.begin("update console user") as conn:
            count = conn.execute(
                sa.update(_USER).where(_USER.c.username == username).values(**values)
            ).rowcount
            if "password_hash" in values or values.get("disabled_at") is not None:
                conn.execute(sa.delete(_SESSION).where(_SESSION.c.username == username))
        if not count:
            raise AccessError("no_such_user", f"no console user named {username!r}")

    # --- sessions -------------------------------------------------------------------------

    def create_session(self, record: SessionRecord) -> None:
        """Raises StorageError."""
        with self._storage.begin("create console session") as conn:
            conn.execute(
                sa.insert(_SESSION), {name: getattr(record, name) for name in _SESSION_FIELDS}
            )

    def session(self, secret_hash: str) -> tuple[SessionRecord, UserRecord | None] | None:
        """The session with this hash and its user (None if the user is gone).

        Raises StorageError."""
        with self._storage.connect("read console session") as conn:
            row = (
                conn.execute(sa.select(_SESSION).where(_SESSION.c.secret_hash == secret_hash))
                .mappings()
                .first()
            )
        if row is None:
            return None
        session = SessionRecord(**{name: row[name] for name in _SESSION_FIELDS})
        return session, self.user(session.username)

    def touch_session(self, secret_hash: str, now: datetime) -> None:
        """Raises StorageError."""
        with self._storage.begin("touch console session") as conn:
            conn.execute(
                sa.update(_SESSION)
                .where(_SESSION.c.secret_hash == secret_hash)
                .values(last_seen_at=now)
            )

    def delete_session(self, secret_hash: str) -> None:
        """Raises StorageError."""
        with self._storage.begin("end console session") as conn:
            conn.execute(sa.delete(_SESSION).where(_SESSION.c.secret_hash == secret_hash))

    def prune_sessions(self, *, idle: timedelta, absolute: timedelta, now: datetime) -> int:
        """Delete sessions that can no longer be used (idle or past their absolute expiry);
        returns how many. Raises StorageError."""
        stmt = sa.delete(_SESSION).where(
            sa.or_(_SESSION.c.last_seen_at < now - idle, _SESSION.c.created_at < now - absolute)
        )
        with self._storage.begin("prune console sessions") as conn:
            return int(conn.execute(stmt).rowcount)
