"""The ``update_status`` table: every update status a terminal sent, and the reads over it.

Each accepted ``kf.update`` (``protocol.update_status``) becomes one row, written by the
batched writer in the same transaction as the terminal's dedup position
(``Storage.write`` calls ``insert_updates``), stored once: unique by terminal, boot_id and
seq, like ``event`` (a duplicate that slipped past the in-memory check after a restart is
dropped by ``ON CONFLICT DO NOTHING``). Rows are pruned by the retention job
(``Storage.prune_update_statuses``, setting ``update_status_retention_days``).

Public interface (for the rollout API and the dashboards):

- ``UpdateStatusRow``: the table (migration ``0006``; ``attempt`` from ``0008``).
- ``insert_updates(conn, insert, records)``: the writer's part (``records``:
  ``server.records.UpdateRecord``).
- ``timeline(engine, terminal_id, limit, rollout_id=None)``: one terminal's statuses newest
  first, optionally of one rollout only.
- ``rollout_terminals(engine, rollout_id, limit, after)``: each terminal's latest status in
  one rollout (by terminal id, ``limit`` from ``after``) and the count per state of all.

Why one table of transitions and no separate "latest" table: the latest state is the
newest row per (terminal, rollout), found with one indexed ``max(id)`` per terminal; a
second table would be a second write per message and a second place to keep consistent.
Rejected: storing statuses as ``event`` rows (their body is JSON: no index on rollout or
state, and the event retention would bound rollout history by the event flood).

Never decides anything about a rollout (that is ``server.rollout_planner``); every
SQLAlchemy error is translated into ``StorageError`` by the caller's ``database_errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field

from server.records import UpdateRecord
from server.storage import _Table, _text, _ts, _utc, database_errors

__all__ = [
    "MAX_DETAIL_CHARS",
    "RolloutTerminals",
    "UpdateStatusRow",
    "insert_updates",
    "latest_states",
    "rollout_terminals",
    "timeline",
]

MAX_DETAIL_CHARS: Final = 256
"""The wire bounds ``detail`` (``protocol.messages.Text``); the column holds that much."""
_CHUNK: Final = 500


class UpdateStatusRow(_Table, table=True):
    """One status a terminal sent for one directive (stored once: terminal, boot_id, seq)."""

    __tablename__ = "update_status"
    __table_args__ = (
        sa.UniqueConstraint(
            "terminal_id", "boot_id", "seq", name="uq_update_status_terminal_boot_seq"
        ),
        sa.Index("ix_update_status_terminal_received", "terminal_id", "received_at"),
        sa.Index("ix_update_status_rollout_terminal", "rollout_id", "terminal_id"),
        sa.Index("ix_update_status_received", "received_at"),
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
    rollout_id: str | None = _text(64)
    directive_seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    state: str = _text(32, nullable=False)
    reason: str | None = _text(64)
    detail: str | None = _text(MAX_DETAIL_CHARS)
    occurred_at: datetime = _ts()  # device time (the message's sent_at)
    received_at: datetime = _ts()  # server time
    attempt: int | None = Field(  # the directive's attempt (migration 0008); null: older agent
        default=None, sa_column=sa.Column(sa.BigInteger, nullable=True)
    )


_UPDATE: Final = UpdateStatusRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
_FIELDS: Final = tuple(f for f in UpdateRecord.__dataclass_fields__)


def _row(record: UpdateRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in _FIELDS}
    if record.detail is not None:
        row["detail"] = record.detail[:MAX_DETAIL_CHARS]
    return row


def _record(row: Any) -> UpdateRecord:
    values = {name: row[name] for name in _FIELDS}
    values["occurred_at"] = _utc(values["occurred_at"])
    values["received_at"] = _utc(values["received_at"])
    return UpdateRecord(**values)


def insert_updates(conn: Connection, insert: Any, records: Sequence[UpdateRecord]) -> None:
    """Insert ``records`` inside the caller's transaction; a duplicate is stored once.

    ``insert``: the dialect's ``insert`` (it has ``on_conflict_do_nothing``).
    """
    stmt = insert(_UPDATE).on_conflict_do_nothing(
        index_elements=[_UPDATE.c.terminal_id, _UPDATE.c.boot_id, _UPDATE.c.seq]
    )
    rows = [_row(r) for r in records]
    for start in range(0, len(rows), _CHUNK):
        conn.execute(stmt, rows[start : start + _CHUNK])


def timeline(
    engine: Engine, terminal_id: str, limit: int, rollout_id: str | None = None
) -> list[UpdateRecord]:
    """One terminal's update statuses, newest first (server time, then id), at most ``limit``;
    with ``rollout_id``, only those of that rollout (its timeline in the rollout).

    Raises StorageError.
    """
    stmt = sa.select(_UPDATE).where(_UPDATE.c.terminal_id == terminal_id)
    if rollout_id is not None:
        stmt = stmt.where(_UPDATE.c.rollout_id == rollout_id)
    stmt = stmt.order_by(_UPDATE.c.received_at.desc(), _UPDATE.c.id.desc()).limit(limit)
    with database_errors("read update timeline"), engine.connect() as conn:
        return [_record(row) for row in conn.execute(stmt).mappings()]


@dataclass(frozen=True, slots=True)
class RolloutTerminals:
    """A page of one rollout's terminals (their latest status) and the counts of all of them."""

    counts: dict[str, int]
    terminals: list[UpdateRecord]
    next_after: str | None  # pass as ``after`` for the next page; None on the last


def rollout_terminals(
    engine: Engine, rollout_id: str, limit: int, after: str | None = None
) -> RolloutTerminals:
    """Each terminal's latest status in ``rollout_id`` (the newest row: highest id).

    Terminals in id order, at most ``limit`` with ids greater than ``after``; ``counts``
    covers every terminal of the rollout. Raises StorageError.
    """
    latest = (
        sa.select(sa.func.max(_UPDATE.c.id).label("id"))
        .where(_UPDATE.c.rollout_id == rollout_id)
        .group_by(_UPDATE.c.terminal_id)
        .subquery()
    )
    rows = sa.select(_UPDATE).join(latest, _UPDATE.c.id == latest.c.id)
    counts_stmt = (
        sa.select(_UPDATE.c.state, sa.func.count())
        .join(latest, _UPDATE.c.id == latest.c.id)
        .group_by(_UPDATE.c.state)
    )
    page = rows.order_by(_UPDATE.c.terminal_id).limit(limit + 1)
    if after is not None:
        page = page.where(_UPDATE.c.terminal_id > after)
    with database_errors("read rollout terminals"), engine.connect() as conn:
        counts = {state: int(n) for state, n in conn.execute(counts_stmt)}
        found = [_record(row) for row in conn.execute(page).mappings()]
    more = len(found) > limit
    found = found[:limit]
    return RolloutTerminals(
        counts=counts, terminals=found, next_after=found[-1].terminal_id if more else None
    )


def latest_states(engine: Engine) -> dict[str, str]:
    """Each terminal's latest update state (its newest row, any rollout). Raises StorageError."""
    latest = (
        sa.select(sa.func.max(_UPDATE.c.id).label("id")).group_by(_UPDATE.c.terminal_id).subquery()
    )
    stmt = sa.select(_UPDATE.c.terminal_id, _UPDATE.c.state).join(
        latest, _UPDATE.c.id == latest.c.id
    )
    with database_errors("read latest update states"), engine.connect() as conn:
        return {tid: state for tid, state in conn.execute(stmt)}
