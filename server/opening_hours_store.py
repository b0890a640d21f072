"""Where a hall's opening hours hit the disk: table ``hall_opening_hours``.

One row per hall holding its ``server.opening_hours.OpeningHours`` as a JSON document,
who set it and when (migration ``0005``). ``OpeningHoursStore`` borrows ``Storage``'s
engine and error translation: every SQLAlchemy error leaves as ``StorageError``. A
stored document that no longer validates (edited by hand) is reported as
``StorageDataError``, never returned half-read. The table is bounded: hours for one more
hall than ``max_halls`` are refused (``TooManyHallsError``), never pruned (docs/data-model.md,
"Retention"). Decisions (is the hall open) are
``server.opening_hours``'s, not this module's.

Why one JSON document, not rows per interval and holiday: the hours are always read and
replaced whole, no query looks inside them, and the model's validation (bounds, no
overlap) stays in one place; rows per interval would need a second validation in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Field

from server.errors import StorageDataError, TooManyHallsError
from server.opening_hours import OpeningHours
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = ["HallHours", "OpeningHoursRow", "OpeningHoursStore"]


class OpeningHoursRow(ServerTable, table=True):
    """One hall's opening hours, replaced whole on every change."""

    __tablename__ = "hall_opening_hours"

    hall: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    document: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    updated_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))


_HOURS: Final = ServerTable.metadata.tables["hall_opening_hours"]


@dataclass(frozen=True, slots=True)
class HallHours:
    """A hall's stored hours and who set them when."""

    hall: str
    hours: OpeningHours
    updated_at: datetime
    updated_by: str


class OpeningHoursStore:
    """Opening hours on ``storage``'s database (which must be open)."""

    def __init__(self, storage: Storage, *, max_halls: int = 2000) -> None:
        """``max_halls`` bounds the table: one row per hall an operator named, and a
        misspelt name is a new hall (``opening_hours_max_halls``)."""
        self._storage = storage
        self._max_halls = max_halls

    def put(self, hall: str, hours: OpeningHours, *, actor: str, now: datetime) -> HallHours:
        """Replace ``hall``'s hours (or set its first). Raises TooManyHallsError for a new
        hall once ``max_halls`` have hours, StorageError."""
        values = {
            "hall": hall,
            "document": hours.model_dump(mode="json"),
            "updated_at": now,
            "updated_by": actor,
        }
        with self._storage.begin("set opening hours") as conn:
            replaced = conn.execute(sa.delete(_HOURS).where(_HOURS.c.hall == hall)).rowcount
            if not replaced:
                count = conn.execute(sa.select(sa.func.count()).select_from(_HOURS)).scalar_one()
                if int(count) >= self._max_halls:
                    raise TooManyHallsError(hall, self._max_halls)
            conn.execute(sa.insert(_HOURS), values)
        return HallHours(hall=hall, hours=hours, updated_at=now, updated_by=actor)

    def get(self, hall: str) -> HallHours | None:
        """``hall``'s hours, None if none are set. Raises StorageDataError for a stored
        document that does not validate, StorageError."""
        with self._storage.connect("read opening hours") as conn:
            row = conn.execute(sa.select(_HOURS).where(_HOURS.c.hall == hall)).mappings().first()
        if row is None:
            return None
        try:
            hours = OpeningHours.model_validate(row["document"])
        except ValidationError as exc:
            raise StorageDataError(
                "read opening hours",
                f"the stored hours of {hall!r} are invalid: {exc.error_count()} errors",
            ) from None
        return HallHours(
            hall=hall, hours=hours, updated_at=row["updated_at"], updated_by=row["updated_by"]
        )

    def all(self) -> tuple[dict[str, OpeningHours], list[str]]:
        """Every hall's hours (one query; as many rows as halls with hours), and the halls
        whose stored document does not validate (left out of the first). Raises
        StorageError."""
        with self._storage.connect("read all opening hours") as conn:
            rows = conn.execute(sa.select(_HOURS.c.hall, _HOURS.c.document)).all()
        valid: dict[str, OpeningHours] = {}
        invalid: list[str] = []
        for hall, document in rows:
            try:
                valid[hall] = OpeningHours.model_validate(document)
            except ValidationError:
                invalid.append(hall)
        return valid, sorted(invalid)
