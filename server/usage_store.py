"""The ``usage_event`` table: every citizen transaction a terminal reported (``kf.usage``).

Each accepted ``kf.usage`` (``protocol.usage``) becomes one row, written by the batched
writer in the same transaction as the terminal's dedup position (``Storage.write`` calls
``insert_usage``), stored once: unique by terminal, boot_id and seq, like ``event`` (a
duplicate that slipped past the in-memory check after a restart is dropped by ``ON CONFLICT
DO NOTHING``). Raw rows are kept ``usage_retention_days`` (``Storage.prune_usage_events``);
the hourly rollups that outlive them come with a later task (docs/analytics.md).

Every column is an id, a code from a closed set or a number: the wire has no free text,
and neither has this table. Never decides anything; every SQLAlchemy error is translated
into ``StorageError`` by ``database_errors``.

Public interface: ``UsageEventRow`` (migration ``0011``), ``insert_usage(conn, insert,
records)``, ``usage_events(engine, terminal_id, limit)`` (newest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field

from server.records import UsageRecord
from server.storage import _Table, _text, _ts, _utc, database_errors

__all__ = ["UsageEventRow", "insert_usage", "usage_events"]

_CHUNK: Final = 500


class UsageEventRow(_Table, table=True):
    """One finished citizen transaction at one terminal (stored once: terminal, boot_id, seq)."""

    __tablename__ = "usage_event"
    __table_args__ = (
        sa.UniqueConstraint(
            "terminal_id", "boot_id", "seq", name="uq_usage_event_terminal_boot_seq"
        ),
        sa.Index("ix_usage_event_terminal_occurred", "terminal_id", "occurred_at"),
        sa.Index("ix_usage_event_received", "received_at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    terminal_id: str = _text(64, nullable=False)
    boot_id: str = _text(64, nullable=False)
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    service: str = _text(64, nullable=False)
    outcome: str = _text(16, nullable=False)
    cause: str | None = _text(16)
    duration_s: float = Field(sa_column=sa.Column(sa.Float, nullable=False))
    pages: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    occurred_at: datetime = _ts()  # device time (the message's sent_at)
    received_at: datetime = _ts()  # server time


_USAGE: Final = UsageEventRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
_FIELDS: Final = tuple(UsageRecord.__dataclass_fields__)


def insert_usage(conn: Connection, insert: Any, records: Sequence[UsageRecord]) -> None:
    """Insert ``records`` inside the caller's transaction; a duplicate is stored once.

    ``insert``: the dialect's ``insert`` (it has ``on_conflict_do_nothing``).
    """
    stmt = insert(_USAGE).on_conflict_do_nothing(
        index_elements=[_USAGE.c.terminal_id, _USAGE.c.boot_id, _USAGE.c.seq]
    )
    rows = [{name: getattr(r, name) for name in _FIELDS} for r in records]
    for start in range(0, len(rows), _CHUNK):
        conn.execute(stmt, rows[start : start + _CHUNK])


def usage_events(engine: Engine, terminal_id: str | None, limit: int) -> list[UsageRecord]:
    """Stored transactions newest first (device time, then id), of one terminal or all.

    Raises StorageError.
    """
    stmt = sa.select(_USAGE)
    if terminal_id is not None:
        stmt = stmt.where(_USAGE.c.terminal_id == terminal_id)
    stmt = stmt.order_by(_USAGE.c.occurred_at.desc(), _USAGE.c.id.desc()).limit(limit)
    with database_errors("read usage events"), engine.connect() as conn:
        found = []
        for row in conn.execute(stmt).mappings():
            values = {name: row[name] for name in _FIELDS}
            values["occurred_at"] = _utc(values["occurred_at"])
            values["received_at"] = _utc(values["received_at"])
            found.append(UsageRecord(**values))
        return found
