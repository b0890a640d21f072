"""Where API tokens and the audit log hit the disk: tables ``api_token`` and ``audit_entry``.

``AccessStore`` is the repository over them on the server's database (it borrows
``Storage``'s engine and error translation: every SQLAlchemy error leaves as
``StorageError``). A token row holds the SHA-256 of its secret, never the
secret. Audit rows are only ever inserted, read and pruned by age: nothing here
updates or deletes one entry. ``DatabaseAudit`` is the durable ``AuditSink``:
it never fails the action it records (a storage error is counted in
``kioskfleet_audit_write_failures_total`` and logged). Decisions (may this token
be used, which role may what) are ``server.access``'s, not this module's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from sqlmodel import Field

from server.access import Role, TokenRecord
from server.audit import AuditEntry, AuditResult
from server.errors import AccessError, InvalidCursorError, StorageDataError, StorageError
from server.fleet_query import decode_cursor, encode_cursor
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = [
    "AccessStore",
    "AuditFilter",
    "AuditPage",
    "AuditRow",
    "DatabaseAudit",
    "TokenRow",
]

log = logging.getLogger(__name__)

_PRUNE_CHUNK: Final = 5000


def _ts(nullable: bool = False, **kw: Any) -> Any:
    return Field(sa_column=sa.Column(UtcDateTime(), nullable=nullable, **kw))


def _text(length: int, nullable: bool = True, **kw: Any) -> Any:
    return Field(sa_column=sa.Column(sa.String(length), nullable=nullable, **kw))


def _serial() -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )


class TokenRow(ServerTable, table=True):
    """One API token: its name, role, vendor, the SHA-256 of its secret, its lifetime."""

    __tablename__ = "api_token"

    id: int | None = _serial()
    name: str = _text(64, nullable=False, unique=True)
    role: str = _text(16, nullable=False)
    vendor: str | None = _text(64)
    secret_hash: str = _text(64, nullable=False, unique=True)
    created_at: datetime = _ts()
    created_by: str = _text(128, nullable=False)
    expires_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)
    last_used_at: datetime | None = _ts(nullable=True)


class AuditRow(ServerTable, table=True):
    """One audited action (``server.audit.AuditEntry``); inserted once, pruned by age only."""

    __tablename__ = "audit_entry"
    __table_args__ = (
        sa.Index("ix_audit_entry_at", "at"),
        sa.Index("ix_audit_entry_actor", "actor"),
    )

    id: int | None = _serial()
    at: datetime = _ts()
    actor: str = _text(128, nullable=False)
    action: str = _text(64, nullable=False)
    result: str = _text(16, nullable=False)
    target: str | None = _text(128)
    source: str | None = _text(64)
    role: str | None = _text(16)
    detail: dict[str, str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))


_TOKEN: Final = ServerTable.metadata.tables["api_token"]
_AUDIT: Final = ServerTable.metadata.tables["audit_entry"]
_TOKEN_FIELDS: Final = (
    "name",
    "role",
    "vendor",
    "secret_hash",
    "created_at",
    "created_by",
    "expires_at",
    "revoked_at",
    "last_used_at",
)
_AUDIT_FIELDS: Final = ("at", "actor", "action", "result", "target", "source", "role")
_AUDIT_LIMITS: Final = {"actor": 128, "action": 64, "target": 128, "source": 64, "role": 16}


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which entries ``AccessStore.audit`` returns: each given field must equal, ``since``
    inclusive, ``until`` exclusive."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    result: AuditResult | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: tuple[AuditEntry, ...]
    next_cursor: str | None


def _token(row: sa.RowMapping) -> TokenRecord:
    values = {name: row[name] for name in _TOKEN_FIELDS}
    values["role"] = Role(values["role"])
    return TokenRecord(**values)


def _bounded(name: str, value: str | None) -> str | None:
    limit = _AUDIT_LIMITS.get(name)
    if value is None or limit is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "\u2026"


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    row: dict[str, Any] = {name: _bounded(name, getattr(entry, name)) for name in _AUDIT_FIELDS}
    row["result"] = entry.result.value
    row["detail"] = {str(k)[:64]: str(v)[:256] for k, v in entry.detail.items()}
    return row


def _audit_entry(row: sa.RowMapping) -> AuditEntry:
    values = {name: row[name] for name in _AUDIT_FIELDS}
    try:
        values["result"] = AuditResult(values["result"])
    except ValueError:  # written by a newer server
        values["result"] = AuditResult.FAILED
    return AuditEntry(**values, detail=dict(row["detail"] or {}))


def _audit_cursor(cursor: str) -> int:
    """The row id in an audit cursor. Raises InvalidCursorError."""
    text = decode_cursor(cursor)
    if not text.isdigit():
        raise InvalidCursorError("cursor is not one this server handed out")
    return int(text)


class AccessStore:
    """Tokens and audit entries on ``storage``'s database (which must be open)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, record: TokenRecord) -> None:
        """Store a new token. Raises AccessError(``token_exists``) if the name is taken,
        StorageError if the database fails."""
        try:
            with self._storage.begin("create token") as conn:
                conn.execute(
                    sa.insert(_TOKEN), {name: getattr(record, name) for name in _TOKEN_FIELDS}
                )
        except StorageDataError:
            if self.token(record.name) is not None:
                raise AccessError("token_exists", f"a token named {record.name!r} exists") from None
            raise

    def token(self, name: str) -> TokenRecord | None:
        """The token named ``name``, None if there is none. Raises StorageError."""
        with self._storage.connect("read token") as conn:
            row = conn.execute(sa.select(_TOKEN).where(_TOKEN.c.name == name)).mappings().first()
        return None if row is None else _token(row)

    def token_by_hash(self, secret_hash: str) -> TokenRecord | None:
        """The token whose secret hashes to ``secret_hash``. Raises StorageError."""
        stmt = sa.select(_TOKEN).where(_TOKEN.c.secret_hash == secret_hash)
        with self._storage.connect("authenticate") as conn:
            row = conn.execute(stmt).mappings().first()
        return None if row is None else _token(row)

    def tokens(self) -> list[TokenRecord]:
        """Every token, revoked ones included, by name. Raises StorageError."""
        with self._storage.connect("list tokens") as conn:
            rows = conn.execute(sa.select(_TOKEN).order_by(_TOKEN.c.name)).mappings()
            return [_token(row) for row in rows]

    def count_tokens(self) -> int:
        """How many tokens exist (revoked ones too). Raises StorageError."""
        with self._storage.connect("count tokens") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_TOKEN)).scalar_one())

    def revoke_token(self, name: str, now: datetime) -> TokenRecord:
        """Mark the token revoked at ``now`` (kept for the audit trail); returns it as it is
        now. Revoking a revoked token keeps its first revocation time.

        Raises AccessError(``no_such_token``), StorageError.
        """
        with self._storage.begin("revoke token") as conn:
            conn.execute(
                sa.update(_TOKEN)
                .where(_TOKEN.c.name == name, _TOKEN.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        record = self.token(name)
        if record is None:
            raise AccessError("no_such_token", f"no token named {name!r}")
        return record

    def delete_token(self, name: str) -> None:
        """Remove a token row: only to undo a creation whose secret could not be handed to
        anyone (the bootstrap token's file); a used token is revoked, never deleted.
        Raises StorageError."""
        with self._storage.begin("delete token") as conn:
            conn.execute(sa.delete(_TOKEN).where(_TOKEN.c.name == name))

    def touch_token(self, name: str, now: datetime) -> None:
        """Set the token's ``last_used_at``. Raises StorageError."""
        with self._storage.begin("touch token") as conn:
            conn.execute(sa.update(_TOKEN).where(_TOKEN.c.name == name).values(last_used_at=now))

    # --- audit ----------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        """Insert one entry (over-long strings are cut, marked with an ellipsis). Never
        fenced by the job lease: it records what a job did already.

        Raises StorageError.
        """
        with self._storage.begin("write audit entry", fenced=False) as conn:
            conn.execute(sa.insert(_AUDIT), _audit_row(entry))

    def audit(self, flt: AuditFilter, *, limit: int, cursor: str | None = None) -> AuditPage:
        """Entries matching ``flt``, newest first, at most ``limit``, after ``cursor``.

        Raises InvalidCursorError, StorageError.
        """
        stmt = sa.select(_AUDIT)
        for name in ("actor", "action", "target"):
            value = getattr(flt, name)
            if value is not None:
                stmt = stmt.where(_AUDIT.c[name] == value)
        if flt.result is not None:
            stmt = stmt.where(_AUDIT.c.result == flt.result.value)
        if flt.since is not None:
            stmt = stmt.where(_AUDIT.c.at >= flt.since)
        if flt.until is not None:
            stmt = stmt.where(_AUDIT.c.at < flt.until)
        if cursor:
            stmt = stmt.where(_AUDIT.c.id < _audit_cursor(cursor))
        stmt = stmt.order_by(_AUDIT.c.id.desc()).limit(limit + 1)
        with self._storage.connect("read audit") as conn:
            rows = list(conn.execute(stmt).mappings())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(str(rows[-1]["id"])) if more and rows else None
        return AuditPage(items=tuple(_audit_entry(r) for r in rows), next_cursor=next_cursor)

    def prune_tokens(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete tokens revoked or expired before ``now - older_than`` (they authenticate
        nobody any more; their audit entries stay); returns how many. The first token ever
        made stays: an empty table is what makes a starting server bootstrap a new admin
        token (``Tokens.bootstrap``), which a retention must never bring about. Raises
        StorageError."""
        cutoff = now - older_than
        first = sa.select(sa.func.min(_TOKEN.c.id)).scalar_subquery()
        with self._storage.begin("prune tokens") as conn:
            result = conn.execute(
                sa.delete(_TOKEN).where(
                    sa.or_(_TOKEN.c.revoked_at < cutoff, _TOKEN.c.expires_at < cutoff),
                    _TOKEN.c.id != first,
                )
            )
        return int(result.rowcount or 0)

    def prune_audit(
        self, *, older_than: timedelta, now: datetime, chunk: int = _PRUNE_CHUNK
    ) -> int:
        """Delete entries older than ``now - older_than``, ``chunk`` per transaction;
        returns how many. Raises StorageError."""
        cutoff = now - older_than
        deleted = 0
        while True:
            with self._storage.begin("prune audit") as conn:
                ids = sa.select(_AUDIT.c.id).where(_AUDIT.c.at < cutoff).limit(chunk)
                count = int(conn.execute(sa.delete(_AUDIT).where(_AUDIT.c.id.in_(ids))).rowcount)
            deleted += count
            if count < chunk:
                return deleted


class DatabaseAudit:
    """The durable ``AuditSink``: one row per entry. ``record`` never raises for a storage
    failure: it counts ``kioskfleet_audit_write_failures_total`` and logs the entry's action,
    actor and target (the action goes on; the log line is the trace left)."""

    def __init__(self, store: AccessStore, registry: CollectorRegistry) -> None:
        self._store = store
        self.failures = Counter(
            "kioskfleet_audit_write_failures",
            "Audit entries that could not be stored (the action was done all the same)",
            registry=registry,
        )

    def record(self, entry: AuditEntry) -> None:
        try:
            self._store.add_audit(entry)
        except StorageError as exc:
            self.failures.inc()
            log.error(
                "audit entry not stored (%s): %s by %s on %s: %s",
                exc,
                entry.action,
                entry.actor,
                entry.target,
                entry.result.value,
            )
