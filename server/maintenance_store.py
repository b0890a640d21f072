"""Where maintenance windows and problem acknowledgements hit the disk (migration ``0009``).

- ``maintenance_window``: one row per (scope, target): starting a window on a terminal or
  hall that has one replaces it; ending it deletes the row. A window past its ``until``
  is inactive (every reader compares with its clock) and stays until the retention
  (``prune``) deletes it, ``maintenance_retention_days`` after its ``until``.
- ``problem_ack``: one row per (terminal, peripheral): acknowledging again replaces it.
  An ack names its problem by ``problem_since``; one that no longer applies
  (``server.maintenance.ack_applies``) stays until the retention deletes it
  (``acked_at`` older than the retention).

``MaintenanceStore`` borrows ``Storage``'s engine and error translation: every SQLAlchemy
error leaves as ``StorageError``. Decisions (is it active, does an ack apply, what is
allowed) are ``server.maintenance``'s, not this module's. Who changed what is in the
audit log (the API's middleware), not here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy import RowMapping
from sqlmodel import Field

from protocol.messages import PeripheralCondition
from server.maintenance import MaintenanceWindow, ProblemAck, Scope
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = ["MaintenanceStore", "MaintenanceWindowRow", "ProblemAckRow"]


class MaintenanceWindowRow(ServerTable, table=True):
    """A terminal or hall in maintenance until ``until``."""

    __tablename__ = "maintenance_window"

    scope: str = Field(sa_column=sa.Column(sa.String(16), primary_key=True))
    target: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    reason: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    until: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False, index=True))
    started_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    started_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))


class ProblemAckRow(ServerTable, table=True):
    """Someone knows about the problem of one peripheral that began at ``problem_since``."""

    __tablename__ = "problem_ack"

    terminal_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    peripheral: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    problem_since: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    condition: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    note: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    assignee: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    acked_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False, index=True))
    acked_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))


_WINDOW: Final = ServerTable.metadata.tables["maintenance_window"]
_ACK: Final = ServerTable.metadata.tables["problem_ack"]


def _window(row: RowMapping) -> MaintenanceWindow:
    return MaintenanceWindow(
        scope=Scope(row["scope"]),
        target=row["target"],
        reason=row["reason"],
        until=row["until"],
        started_at=row["started_at"],
        started_by=row["started_by"],
    )


def _ack(row: RowMapping) -> ProblemAck:
    return ProblemAck(
        terminal_id=row["terminal_id"],
        peripheral=row["peripheral"],
        problem_since=row["problem_since"],
        condition=PeripheralCondition(row["condition"]),
        note=row["note"],
        assignee=row["assignee"],
        acked_at=row["acked_at"],
        acked_by=row["acked_by"],
    )


class MaintenanceStore:
    """Windows and acks on ``storage``'s database (which must be open)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    # --- windows ----------------------------------------------------------------------------

    def put_window(self, window: MaintenanceWindow) -> None:
        """Start ``window`` (replacing the target's window if any). Raises StorageError."""
        key = (_WINDOW.c.scope == window.scope.value) & (_WINDOW.c.target == window.target)
        with self._storage.begin("start maintenance") as conn:
            conn.execute(sa.delete(_WINDOW).where(key))
            conn.execute(
                sa.insert(_WINDOW),
                {
                    "scope": window.scope.value,
                    "target": window.target,
                    "reason": window.reason,
                    "until": window.until,
                    "started_at": window.started_at,
                    "started_by": window.started_by,
                },
            )

    def end_window(self, scope: Scope, target: str) -> MaintenanceWindow | None:
        """End (delete) ``target``'s window; the window it had, None if none. Raises
        StorageError."""
        key = (_WINDOW.c.scope == scope.value) & (_WINDOW.c.target == target)
        with self._storage.begin("end maintenance") as conn:
            row = conn.execute(sa.select(_WINDOW).where(key)).mappings().first()
            if row is None:
                return None
            conn.execute(sa.delete(_WINDOW).where(key))
        return _window(row)

    def windows(self, *, active_at: datetime | None = None) -> list[MaintenanceWindow]:
        """Every stored window (only those not ended by ``active_at`` when given), by
        scope and target. Bounded: at most ``max_windows`` active ones plus the expired
        ones within the retention. Raises StorageError."""
        query = sa.select(_WINDOW).order_by(_WINDOW.c.scope, _WINDOW.c.target)
        if active_at is not None:
            query = query.where(_WINDOW.c.until > active_at, _WINDOW.c.started_at <= active_at)
        with self._storage.connect("read maintenance windows") as conn:
            return [_window(r) for r in conn.execute(query).mappings()]

    def active_for(
        self, terminal_id: str, hall: str | None, now: datetime
    ) -> list[MaintenanceWindow]:
        """The windows active at ``now`` that cover ``terminal_id``: its own and its hall's
        (at most two rows). Raises StorageError."""
        covers = (_WINDOW.c.scope == Scope.TERMINAL.value) & (_WINDOW.c.target == terminal_id)
        if hall is not None:
            covers = covers | ((_WINDOW.c.scope == Scope.HALL.value) & (_WINDOW.c.target == hall))
        query = (
            sa.select(_WINDOW)
            .where(covers, _WINDOW.c.until > now, _WINDOW.c.started_at <= now)
            .order_by(_WINDOW.c.scope.desc())
        )
        with self._storage.connect("read maintenance windows") as conn:
            return [_window(r) for r in conn.execute(query).mappings()]

    # --- acks -------------------------------------------------------------------------------

    def put_ack(self, ack: ProblemAck) -> None:
        """Store ``ack`` (replacing the peripheral's ack if any). Raises StorageError."""
        key = (_ACK.c.terminal_id == ack.terminal_id) & (_ACK.c.peripheral == ack.peripheral)
        with self._storage.begin("acknowledge a problem") as conn:
            conn.execute(sa.delete(_ACK).where(key))
            conn.execute(
                sa.insert(_ACK),
                {
                    "terminal_id": ack.terminal_id,
                    "peripheral": ack.peripheral,
                    "problem_since": ack.problem_since,
                    "condition": ack.condition.value,
                    "note": ack.note,
                    "assignee": ack.assignee,
                    "acked_at": ack.acked_at,
                    "acked_by": ack.acked_by,
                },
            )

    def acks(self, terminal_id: str | None = None) -> list[ProblemAck]:
        """The stored acks (of ``terminal_id`` when given), applying or not, by terminal and
        peripheral. Raises StorageError."""
        query = sa.select(_ACK).order_by(_ACK.c.terminal_id, _ACK.c.peripheral)
        if terminal_id is not None:
            query = query.where(_ACK.c.terminal_id == terminal_id)
        with self._storage.connect("read acknowledgements") as conn:
            return [_ack(r) for r in conn.execute(query).mappings()]

    # --- retention --------------------------------------------------------------------------

    def prune(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete windows that ended (``until``) and acks made (``acked_at``) before
        ``now - older_than``; returns how many rows. Raises StorageError."""
        cutoff = now - older_than
        with self._storage.begin("prune maintenance") as conn:
            windows = conn.execute(sa.delete(_WINDOW).where(_WINDOW.c.until < cutoff))
            acks = conn.execute(sa.delete(_ACK).where(_ACK.c.acked_at < cutoff))
        return int(windows.rowcount or 0) + int(acks.rowcount or 0)
