"""Where the service catalogue hits the disk: table ``service`` (migration ``0011``).

One row per service: its code, its needs (a JSON list of taxonomy families and kinds),
who set the catalogue and when. ``PUT /api/v1/services`` and ``kioskfleet service set``
replace the catalogue whole, in one transaction. ``ServiceStore`` also keeps the
current catalogue in memory (loaded by ``load()`` at start, replaced by ``put``), which
the ingest reads for every ``kf.usage`` (the ``service`` label) and the collector at
scrape time: no query on those paths. A stored row that no longer validates (edited by
hand) is reported as ``StorageDataError``, never returned half-read.

Why rows per service and not one JSON document (as the opening hours): a later task's
rollups join usage to services by code. Decisions (what a terminal can offer) are
``server.service_catalogue``'s, not this module's.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Field

from server.errors import StorageDataError
from server.service_catalogue import OTHER_SERVICE, Catalogue
from server.storage import ServerTable, Storage, UtcDateTime

__all__ = ["ServiceRow", "ServiceStore"]


class ServiceRow(ServerTable, table=True):
    """One catalogued service and what it needs."""

    __tablename__ = "service"

    code: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    needs: list[Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), nullable=False))
    updated_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))


_SERVICE: Final = ServerTable.metadata.tables["service"]


class ServiceStore:
    """The catalogue on ``storage``'s database (which must be open), and its current copy."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._current = Catalogue()
        self._codes: frozenset[str] = frozenset()

    @property
    def current(self) -> Catalogue:
        """The catalogue as last loaded or set (empty before ``load``)."""
        with self._lock:
            return self._current

    def label(self, code: str) -> str:
        """``code`` for a metric label when catalogued, else ``other`` (no lock, no query)."""
        return code if code in self._codes else OTHER_SERVICE

    def _use(self, catalogue: Catalogue) -> None:
        with self._lock:
            self._current = catalogue
            self._codes = catalogue.codes

    def put(self, catalogue: Catalogue, *, actor: str, now: datetime) -> Catalogue:
        """Replace the whole catalogue. Raises StorageError."""
        rows = [
            {
                "code": s.code,
                "needs": [n.value for n in s.needs],
                "position": i,
                "updated_at": now,
                "updated_by": actor,
            }
            for i, s in enumerate(catalogue.services)
        ]
        with self._storage.begin("set the service catalogue") as conn:
            conn.execute(sa.delete(_SERVICE))
            if rows:
                conn.execute(sa.insert(_SERVICE), rows)
        self._use(catalogue)
        return catalogue

    def load(self) -> Catalogue:
        """Read the stored catalogue and make it current. Raises StorageDataError for a
        stored row that does not validate, StorageError."""
        with self._storage.connect("read the service catalogue") as conn:
            rows = conn.execute(
                sa.select(_SERVICE.c.code, _SERVICE.c.needs).order_by(_SERVICE.c.position)
            ).all()
        try:
            catalogue = Catalogue.model_validate(
                {"services": [{"code": code, "needs": needs} for code, needs in rows]}
            )
        except ValidationError as exc:
            raise StorageDataError(
                "read the service catalogue",
                f"the stored catalogue is invalid: {exc.error_count()} errors",
            ) from None
        self._use(catalogue)
        return catalogue
