"""A heartbeat's row write for a whole batch, as one driver-level statement per chunk.

In a drain nearly every flushed terminal changed only its position (``POSITION_FIELDS``
and ``updated_at``), so this statement runs once per flush with hundreds of rows. Through
SQLAlchemy's compiled ``executemany`` each row cost a ``construct_params`` and a bind
processor per column; here the rows go to the driver as they are:

- SQLite: ``executemany`` of one ``UPDATE`` with ``?`` parameters (timestamps as the
  ISO-8601 text ``storage.UtcDateTime`` stores).
- PostgreSQL: per chunk, the rows locked in id order (``SELECT ... ORDER BY id FOR
  UPDATE``, as the row-by-row statements locked them: overlapping batches of two replicas
  wait, never deadlock), then one ``UPDATE ... FROM unnest(<one array per column>)``: two
  statements and two round trips instead of one per row.

The ``WHERE`` is the one the ORM statement had: only a row in the same stream and not
further along in it moves (a replica whose flush lags another's must not move the row
back). The caller compares the count of rows updated with the rows it asked for, and
writes the missing ones whole. Never commits, never decides which rows are position-only.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from server.fleet_views import POSITION_FIELDS, TerminalView

__all__ = ["update_positions"]

_KEYS: Final = ("id", "boot_id", *POSITION_FIELDS)
_VALUES: Final = operator.attrgetter(*_KEYS)


def _iso(value: datetime | None) -> str | None:
    """``UtcDateTime``'s SQLite text: UTC, microseconds always written (text order is time
    order)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return value.isoformat(timespec="microseconds")


@functools.cache
def _sqlite_sql(table: sa.Table) -> str:
    assigned = ", ".join(f"{name} = ?" for name in (*POSITION_FIELDS, "updated_at"))
    return (
        f"UPDATE {table.name} SET {assigned}"  # noqa: S608 - names from the metadata, values bound
        " WHERE id = ? AND boot_id = ? AND (last_seq IS NULL OR last_seq <= ?)"
    )


@functools.cache
def _postgresql_sql(table: sa.Table) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's stub
    arrays = ", ".join(f"%s::{table.c[name].type.compile(dialect=dialect)}[]" for name in _KEYS)
    assigned = ", ".join(f"{name} = v.{name}" for name in POSITION_FIELDS)
    return (
        f"UPDATE {table.name} AS t SET {assigned}, updated_at = %s"  # noqa: S608 - as above
        f" FROM unnest({arrays}) AS v({', '.join(_KEYS)})"
        " WHERE t.id = v.id AND t.boot_id = v.boot_id"
        " AND (t.last_seq IS NULL OR t.last_seq <= v.last_seq)"
    )


@functools.cache
def _postgresql_lock(table: sa.Table) -> str:
    """The rows an ``UPDATE ... FROM`` would lock in the join's order, locked first in id
    order: two replicas writing overlapping batches wait for each other, never deadlock."""
    return f"SELECT 1 FROM {table.name} WHERE id = ANY(%s) ORDER BY id FOR UPDATE"  # noqa: S608 - as above


def update_positions(
    conn: Connection,
    table: sa.Table,
    terminals: Sequence[TerminalView],
    now: datetime,
    *,
    chunk: int,
) -> int:
    """Write the position columns of ``terminals`` (distinct ids) and ``updated_at=now``
    into the existing rows of ``table``; returns how many rows were updated. Raises
    SQLAlchemy's errors (the caller translates them)."""
    updated = 0
    if conn.dialect.name == "sqlite":
        sql = _sqlite_sql(table)
        stamp = _iso(now)
        rows = []
        for view in terminals:
            tid, boot_id, last_seen, last_sent_at, last_seq, reports, events = _VALUES(view)
            seen, sent = _iso(last_seen), _iso(last_sent_at)
            rows.append((seen, sent, last_seq, reports, events, stamp, tid, boot_id, last_seq))
        for i in range(0, len(rows), chunk):
            updated += conn.exec_driver_sql(sql, rows[i : i + chunk]).rowcount
        return updated
    sql, lock = _postgresql_sql(table), _postgresql_lock(table)
    for i in range(0, len(terminals), chunk):
        part = terminals[i : i + chunk]
        columns: list[Any] = [list(c) for c in zip(*map(_VALUES, part), strict=True)]
        conn.exec_driver_sql(lock, (columns[0],))  # by id, as the row-by-row writes locked
        updated += conn.exec_driver_sql(sql, (now, *columns)).rowcount
    return updated
