"""Where the analytics rollups hit the disk (migration ``0012``, docs/analytics.md).

- ``usage_hourly``: one row per hall, terminal, service and UTC hour: counts by outcome and
  failure cause (``server.analytics.OUTCOME_COLUMNS``), busy seconds, pages. Filled from
  ``usage_event`` by ``roll_up``, which reads the raw rows after the watermark (their id) in
  id order, sums them (``server.analytics.rollup``), adds the sums to the stored rows (an
  upsert that adds) and moves the watermark, all in one transaction: each raw row is counted
  exactly once, also after a crash or restart (the transaction either happened or did not).
  A second server rolling up at the same time finds the watermark moved and rolls back.
  The hall is the terminal's hall in the fleet state when the row is rolled up (seconds to
  a minute after it arrived).
- ``usage_availability``: per hall, service and UTC hour, the seconds the hall was open and
  the seconds it was open with at least one terminal able to offer the service, sampled at
  each rollup tick (``add_availability``).
- ``usage_rollup_watermark``: one row per rollup (``usage_hourly``): the last raw id counted.

Ids commit in id order because one writer thread (``WriteBehind``) inserts ``usage_event``
one flush at a time; the watermark relies on it. Rows hold ids, catalogue codes and
numbers only. Every SQLAlchemy error becomes ``StorageError``.

Public interface: ``UsageHourlyRow``, ``UsageAvailabilityRow``, ``RollupWatermarkRow``,
``UsageRollupStore``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlmodel import Field

from server.analytics import OUTCOME_COLUMNS, HourlyUsage, UsageEvent, rollup
from server.errors import ServerError
from server.storage import ServerTable, Storage, UtcDateTime, server_metadata

__all__ = ["RollupWatermarkRow", "UsageAvailabilityRow", "UsageHourlyRow", "UsageRollupStore"]

_HOURLY_NAME: Final = "usage_hourly"
_UNKNOWN_HALL: Final = "unknown"


def _count() -> Any:
    return Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))


def _id() -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )


class UsageHourlyRow(ServerTable, table=True):
    """A terminal's transactions of one service in one UTC hour."""

    __tablename__ = _HOURLY_NAME
    __table_args__ = (
        sa.UniqueConstraint(
            "hall", "terminal_id", "service", "hour_start", name="uq_usage_hourly_key"
        ),
        sa.Index("ix_usage_hourly_hour", "hour_start"),
    )

    id: int | None = _id()
    hall: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    terminal_id: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    service: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    hour_start: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    completed: int = _count()
    abandoned: int = _count()
    failed_printer: int = _count()
    failed_reader: int = _count()
    failed_network: int = _count()
    failed_application: int = _count()
    failed_backend: int = _count()
    busy_s: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False))
    pages: int = _count()


class UsageAvailabilityRow(ServerTable, table=True):
    """Seconds one hall was open, and open with the service offerable, in one UTC hour."""

    __tablename__ = "usage_availability"
    __table_args__ = (
        sa.UniqueConstraint("hall", "service", "hour_start", name="uq_usage_availability_key"),
        sa.Index("ix_usage_availability_hour", "hour_start"),
    )

    id: int | None = _id()
    hall: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    service: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    hour_start: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    open_s: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False))
    available_s: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False))


class RollupWatermarkRow(ServerTable, table=True):
    """The last raw row a rollup counted."""

    __tablename__ = "usage_rollup_watermark"

    name: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    last_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


_HOURLY: Final = UsageHourlyRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
_AVAILABILITY: Final = UsageAvailabilityRow.__table__  # type: ignore[attr-defined]
_WATERMARK: Final = RollupWatermarkRow.__table__  # type: ignore[attr-defined]
_SUMMED: Final = (*OUTCOME_COLUMNS, "busy_s", "pages")
_HOURLY_KEY: Final = ("hall", "terminal_id", "service", "hour_start")


def _row(h: HourlyUsage) -> dict[str, Any]:
    return {
        "hall": h.hall,
        "terminal_id": h.terminal_id,
        "service": h.service,
        "hour_start": h.hour_start,
        **{c: h.counts.get(c, 0) for c in OUTCOME_COLUMNS},
        "busy_s": h.busy_s,
        "pages": h.pages,
    }


class UsageRollupStore:
    """The rollup tables on ``storage``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def _insert(self) -> Any:
        return self._storage._insert()  # the dialect's insert, one place

    def watermark(self) -> int:
        """The last ``usage_event`` id rolled up (0 before the first). Raises StorageError."""
        with self._storage.begin("read rollup watermark") as conn:
            found = conn.execute(
                sa.select(_WATERMARK.c.last_id).where(_WATERMARK.c.name == _HOURLY_NAME)
            ).scalar()
        return int(found or 0)

    def roll_up(self, hall_of: Callable[[str], str | None], *, batch: int = 5000) -> int:
        """Roll up every raw row after the watermark, ``batch`` per transaction; returns how
        many. ``hall_of``: a terminal's hall now (None: unknown). Raises StorageError."""
        done = 0
        while True:
            try:
                n = self._roll_up_batch(hall_of, batch)
            except _RacedError:
                return done  # the other server counts them
            done += n
            if n < batch:
                return done

    def _roll_up_batch(self, hall_of: Callable[[str], str | None], batch: int) -> int:
        raw = server_metadata().tables["usage_event"]
        insert = self._insert()
        with self._storage.begin("roll up usage") as conn:
            last = conn.execute(
                sa.select(_WATERMARK.c.last_id).where(_WATERMARK.c.name == _HOURLY_NAME)
            ).scalar()
            rows = list(
                conn.execute(
                    sa.select(raw).where(raw.c.id > (last or 0)).order_by(raw.c.id).limit(batch)
                ).mappings()
            )
            if not rows:
                return 0
            events = [
                UsageEvent(
                    hall_of(r["terminal_id"]) or _UNKNOWN_HALL,
                    r["terminal_id"],
                    r["service"],
                    r["outcome"],
                    r["cause"],
                    float(r["duration_s"]),
                    int(r["pages"]),
                    r["occurred_at"],
                )
                for r in rows
            ]
            self._add_hourly(conn, insert, rollup(events).values())
            top = max(int(r["id"]) for r in rows)
            if last is None:  # the first rollup ever: another server may make it too
                made = conn.execute(
                    insert(_WATERMARK)
                    .values(name=_HOURLY_NAME, last_id=top)
                    .on_conflict_do_nothing(index_elements=[_WATERMARK.c.name])
                    .returning(_WATERMARK.c.name)
                ).first()
                if made is None:
                    raise _RacedError
            else:
                moved = conn.execute(
                    sa.update(_WATERMARK)
                    .where(_WATERMARK.c.name == _HOURLY_NAME, _WATERMARK.c.last_id == last)
                    .values(last_id=top)
                )
                if moved.rowcount != 1:  # another server rolled these up: undo ours
                    raise _RacedError
        return len(rows)

    def _add_hourly(self, conn: sa.Connection, insert: Any, rows: Iterable[HourlyUsage]) -> None:
        stmt = insert(_HOURLY)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_HOURLY.c[k] for k in _HOURLY_KEY],
            set_={c: _HOURLY.c[c] + stmt.excluded[c] for c in _SUMMED},
        )
        values = [_row(h) for h in rows]
        for start in range(0, len(values), 500):
            conn.execute(stmt, values[start : start + 500])

    def add_availability(
        self, hour: datetime, seconds: Mapping[tuple[str, str], tuple[float, float]]
    ) -> None:
        """Add (open seconds, available seconds) per (hall, service) to ``hour``'s rows.
        Raises StorageError."""
        if not seconds:
            return
        insert = self._insert()
        stmt = insert(_AVAILABILITY)
        stmt = stmt.on_conflict_do_update(
            index_elements=[
                _AVAILABILITY.c.hall,
                _AVAILABILITY.c.service,
                _AVAILABILITY.c.hour_start,
            ],
            set_={c: _AVAILABILITY.c[c] + stmt.excluded[c] for c in ("open_s", "available_s")},
        )
        values = [
            {"hall": h, "service": s, "hour_start": hour, "open_s": o, "available_s": a}
            for (h, s), (o, a) in sorted(seconds.items())
        ]
        with self._storage.begin("add availability") as conn:
            conn.execute(stmt, values)

    def hourly(
        self,
        since: datetime | None,
        until: datetime | None,
        *,
        hall: str | None = None,
        terminal_id: str | None = None,
        service: str | None = None,
    ) -> list[HourlyUsage]:
        """Rollup rows whose hour starts in ``[since, until)``, filtered. Raises StorageError."""
        t = _HOURLY
        stmt = sa.select(t)
        for column, value in (("hall", hall), ("terminal_id", terminal_id), ("service", service)):
            if value is not None:
                stmt = stmt.where(t.c[column] == value)
        if since is not None:
            stmt = stmt.where(t.c.hour_start >= since)
        if until is not None:
            stmt = stmt.where(t.c.hour_start < until)
        with self._storage.begin("read usage rollups") as conn:
            return [
                HourlyUsage(
                    r["hall"],
                    r["terminal_id"],
                    r["service"],
                    r["hour_start"],
                    {c: int(r[c]) for c in OUTCOME_COLUMNS if r[c]},
                    float(r["busy_s"]),
                    int(r["pages"]),
                )
                for r in conn.execute(stmt.order_by(t.c.hour_start, t.c.id)).mappings()
            ]

    def availability(
        self, since: datetime | None, until: datetime | None, *, hall: str | None = None
    ) -> dict[tuple[str, str, datetime], tuple[float, float]]:
        """(hall, service, hour) → (open seconds, available seconds). Raises StorageError."""
        t = _AVAILABILITY
        stmt = sa.select(t)
        if hall is not None:
            stmt = stmt.where(t.c.hall == hall)
        if since is not None:
            stmt = stmt.where(t.c.hour_start >= since)
        if until is not None:
            stmt = stmt.where(t.c.hour_start < until)
        with self._storage.begin("read availability rollups") as conn:
            return {
                (r["hall"], r["service"], r["hour_start"]): (
                    float(r["open_s"]),
                    float(r["available_s"]),
                )
                for r in conn.execute(stmt).mappings()
            }

    def prune(self, *, older_than: timedelta, now: datetime) -> int:
        """Delete rollup rows whose hour started before ``now - older_than``; returns how
        many. Raises StorageError."""
        cutoff = now - older_than
        with self._storage.begin("prune usage rollups") as conn:
            hourly = conn.execute(sa.delete(_HOURLY).where(_HOURLY.c.hour_start < cutoff))
            avail = conn.execute(
                sa.delete(_AVAILABILITY).where(_AVAILABILITY.c.hour_start < cutoff)
            )
        return int(hourly.rowcount or 0) + int(avail.rowcount or 0)


class _RacedError(ServerError):
    """Another server moved the watermark first (the transaction is rolled back)."""
