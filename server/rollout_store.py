"""Where rollouts hit the disk: tables ``rollout`` and ``directive_seq`` (migration ``0007``).

One ``rollout`` row per rollout: its definition and its planner state as JSON documents
(``server.rollout_codec``), the status and ``settled`` copied into columns (the driver steps
the unsettled ones: active, or stopped while notified terminals still report), who created and approved it, and when it was created, last changed, finished
and next wants a planner step (``wake_at``). ``directive_seq`` holds the last directive
sequence number sent to each terminal: ``next_directive_seq`` increments it in the database,
so it always grows, across rollouts and restarts (the agent refuses a directive whose seq is
not above the last it saw).

``RolloutStore`` borrows ``Storage``'s engine and error translation: every SQLAlchemy error
leaves as ``StorageError``; a stored document that no longer decodes is
``StorageDataError``. Decisions are ``server.rollout_planner``'s, never this module's.
Finished rollouts (aborted, canceled, completed) are pruned ``rollout_retention_days``
after they finished (``prune_finished``); active ones never. A terminal's directive seq goes
once the terminal is neither in the fleet nor in the registry (``prune_orphaned_seqs``): a
decommissioned id keeps it as long as its registry tombstone, so that the same hardware,
pre-authorised again within that time, still gets seqs above the last it saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlmodel import Field

from server.errors import StorageDataError
from server.rollout_codec import (
    definition_from_json,
    definition_to_json,
    rollout_from_json,
    rollout_to_json,
)
from server.rollout_planner import Rollout, RolloutStatus
from server.storage import ServerTable, Storage, UtcDateTime, server_metadata

__all__ = [
    "ACTIVE",
    "FINISHED",
    "DirectiveSeqRow",
    "RolloutRow",
    "RolloutStore",
    "StoredRollout",
]

ACTIVE: Final = frozenset(
    {RolloutStatus.AWAITING_APPROVAL, RolloutStatus.RUNNING, RolloutStatus.PAUSED}
)
FINISHED: Final = frozenset(set(RolloutStatus) - ACTIVE)


class RolloutRow(ServerTable, table=True):
    """One rollout: definition and planner state, replaced whole on every step."""

    __tablename__ = "rollout"
    __table_args__ = (sa.Index("ix_rollout_status", "status"),)

    id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    definition: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    state: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    selector: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    # False while the driver must still step it: active, or stopped with terminals that
    # were notified and have not reported a final state yet.
    settled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    created_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    approved_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    created_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(UtcDateTime()))
    wake_at: datetime | None = Field(default=None, sa_column=sa.Column(UtcDateTime()))


class DirectiveSeqRow(ServerTable, table=True):
    """The last directive seq sent to one terminal."""

    __tablename__ = "directive_seq"

    terminal_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


_ROLLOUT: Final = ServerTable.metadata.tables["rollout"]
_SEQ: Final = ServerTable.metadata.tables["directive_seq"]


@dataclass(frozen=True, slots=True)
class StoredRollout:
    """A rollout as stored: the planner's value and the row's bookkeeping."""

    rollout: Rollout
    # every key given must match (``server.rollout_service.selects``): region, hall, model,
    # current_version strings; tags a list
    selector: dict[str, str | list[str]]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    wake_at: datetime | None


def _decode(row: Any) -> StoredRollout:
    try:
        definition = definition_from_json(row["definition"])
        rollout = rollout_from_json(definition, row["state"])
    except ValueError as exc:
        raise StorageDataError("read rollout", f"rollout {row['id']!r}: {exc}") from None
    return StoredRollout(
        rollout=rollout,
        selector=dict(row["selector"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        wake_at=row["wake_at"],
    )


class RolloutStore:
    """Rollouts on ``storage``'s database (which must be open)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def insert(
        self, rollout: Rollout, selector: dict[str, str | list[str]], *, now: datetime
    ) -> None:
        """Store a new rollout. Raises StorageDataError when its id exists, StorageError."""
        definition = rollout.definition
        values = {
            "id": definition.rollout_id,
            "definition": definition_to_json(definition),
            "state": rollout_to_json(rollout),
            "selector": selector,
            "status": rollout.status.value,
            "settled": False,
            "created_by": definition.created_by,
            "approved_by": rollout.approved_by,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "wake_at": None,
        }
        with self._storage.begin("create rollout") as conn:
            conn.execute(sa.insert(_ROLLOUT), values)

    def save(
        self,
        rollout: Rollout,
        *,
        wake_at: datetime | None,
        now: datetime,
        read_at: datetime | None = None,
    ) -> bool:
        """Replace the planner state of an existing rollout. ``read_at``: the ``updated_at``
        of the row the new state was stepped from; the save is refused (returns False,
        nothing written) when the row moved since (another replica saved it meanwhile).
        Raises StorageError."""
        finished = rollout.status in FINISHED
        values: dict[str, Any] = {
            "state": rollout_to_json(rollout),
            "status": rollout.status.value,
            "settled": finished and all(rollout.is_final(t) for t in rollout.terminals),
            "approved_by": rollout.approved_by,
            "updated_at": now,
            "wake_at": wake_at,
        }
        table = _ROLLOUT
        stmt = sa.update(table).where(table.c.id == rollout.definition.rollout_id)
        unchanged = stmt if read_at is None else stmt.where(table.c.updated_at == read_at)
        with self._storage.begin("save rollout") as conn:
            if conn.execute(unchanged.values(**values)).rowcount != 1:
                return False
            if finished:
                conn.execute(stmt.where(table.c.finished_at.is_(None)).values(finished_at=now))
        return True

    def get(self, rollout_id: str) -> StoredRollout | None:
        """The rollout ``rollout_id``, None if there is none. Raises StorageDataError, StorageError."""
        with self._storage.connect("read rollout") as conn:
            row = (
                conn.execute(sa.select(_ROLLOUT).where(_ROLLOUT.c.id == rollout_id))
                .mappings()
                .first()
            )
        return None if row is None else _decode(row)

    def list(self, *, unsettled_only: bool = False, limit: int = 1000) -> list[StoredRollout]:
        """Rollouts newest first, at most ``limit``; ``unsettled_only``: those the driver
        must still step (active, or stopped with terminals still to report).

        Raises StorageDataError, StorageError."""
        stmt = sa.select(_ROLLOUT).order_by(_ROLLOUT.c.created_at.desc(), _ROLLOUT.c.id)
        if unsettled_only:
            stmt = stmt.where(_ROLLOUT.c.settled.is_(False))
        with self._storage.connect("list rollouts") as conn:
            rows = list(conn.execute(stmt.limit(limit)).mappings())
        return [_decode(row) for row in rows]

    def next_directive_seq(self, terminal_id: str) -> int:
        """The next directive seq for ``terminal_id`` (1 for its first), recorded before it is
        returned, so it never repeats. Raises StorageError."""
        return self.next_directive_seqs([terminal_id])[terminal_id]

    def next_directive_seqs(self, terminal_ids: Iterable[str]) -> dict[str, int]:
        """``next_directive_seq`` for each of ``terminal_ids`` in one transaction (a tick's
        directives: one commit, not one per terminal). Raises StorageError."""
        seqs: dict[str, int] = {}
        with self._storage.begin("next directive seq") as conn:
            for terminal_id in terminal_ids:
                row = _SEQ.c.terminal_id == terminal_id
                bumped = conn.execute(sa.update(_SEQ).where(row).values(seq=_SEQ.c.seq + 1))
                if not bumped.rowcount:
                    conn.execute(sa.insert(_SEQ), {"terminal_id": terminal_id, "seq": 1})
                seqs[terminal_id] = int(conn.execute(sa.select(_SEQ.c.seq).where(row)).scalar_one())
        return seqs

    def prune_orphaned_seqs(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete the directive seqs of terminals that have neither a ``terminal`` row (in
        the fleet) nor a ``terminal_registry`` row (registered, or a decommissioned id's
        tombstone, which keeps the seq until it is pruned itself); returns how many.
        ``older_than`` and ``now`` are unused: the tombstone's retention is the delay.
        Raises StorageError."""
        del older_than, now
        tables = server_metadata().tables  # the registry's table is declared elsewhere
        fleet, registry = tables["terminal"], tables["terminal_registry"]
        with self._storage.begin("prune directive seqs") as conn:
            result = conn.execute(
                sa.delete(_SEQ).where(
                    _SEQ.c.terminal_id.not_in(sa.select(fleet.c.id)),
                    _SEQ.c.terminal_id.not_in(sa.select(registry.c.terminal_id)),
                )
            )
        return int(result.rowcount or 0)

    def prune_finished(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete rollouts finished before ``now - older_than``; returns how many.

        Raises StorageError."""
        cutoff = now - older_than
        with self._storage.begin("prune rollouts") as conn:
            result = conn.execute(sa.delete(_ROLLOUT).where(_ROLLOUT.c.finished_at < cutoff))
        return int(result.rowcount or 0)
