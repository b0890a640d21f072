"""Which halls are open now, for the metrics collector at scrape time (issue 12).

``HallOpenings(load, refresh_s=..., clock=...)`` keeps every hall's opening hours in
memory (one document per hall with hours: bounded by the number of halls) and answers
``openings(hall) -> (open, opens_in_s)`` without touching the database: the documents
are reloaded with one query (``OpeningHoursStore.all``) at most every ``refresh_s``
seconds, and on the next call after ``invalidate()`` (the hours API calls it when an
operator sets hours; hours set with the CLI, from another process, are seen at the next
refresh). Per hall, the computed ``OpeningStatus`` is kept until its ``valid_until`` (the
next opening or closing), so a scrape costs a dictionary lookup per hall.

Decisions (docs/monitoring.md, "Opening hours in alerts"): a hall with no hours set, a
terminal with no hall, and a hall whose stored document does not validate are treated as
always open (alerts behave as they did before opening hours existed); a reload that fails
keeps the documents already held and is logged, so a database outage never silences
alerts by itself.

Never does: a database query per scrape or per terminal; it holds no fleet state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from server.errors import ServerError
from server.opening_hours import (
    ALWAYS_OPEN,
    OpeningHours,
    OpeningStatus,
    next_closed_window,
    opening_status,
)

__all__ = ["HallOpenings"]

log = logging.getLogger(__name__)

HoursLoader = Callable[[], tuple[Mapping[str, OpeningHours], list[str]]]


class HallOpenings:
    """Every hall's open status now, from hours cached in memory (see the module doc).
    Thread-safe: scrapes and the hours API may call it at the same time."""

    def __init__(
        self, load: HoursLoader, *, refresh_s: float, clock: Callable[[], datetime]
    ) -> None:
        """Raises ValueError unless ``refresh_s`` > 0."""
        if refresh_s <= 0:
            raise ValueError("refresh_s must be > 0")
        self._load = load
        self._refresh = timedelta(seconds=refresh_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._hours: Mapping[str, OpeningHours] = {}
        self._statuses: dict[str, OpeningStatus] = {}
        self._loaded_at: datetime | None = None  # None: load at the next call

    def invalidate(self) -> None:
        """Reload the hours at the next call (they changed)."""
        with self._lock:
            self._loaded_at = None

    def status(self, hall: str | None, now: datetime) -> OpeningStatus:
        """``hall``'s status at ``now``; ``ALWAYS_OPEN`` for no hall or no (valid) hours."""
        if hall is None:
            return ALWAYS_OPEN
        with self._lock:
            self._maybe_reload(now)
            hours = self._hours.get(hall)
            if hours is None:
                return ALWAYS_OPEN
            cached = self._statuses.get(hall)
            if cached is None or not cached.valid_from <= now < cached.valid_until:
                cached = self._statuses[hall] = opening_status(hours, now)
            return cached

    def closes_at(self, hall: str | None, now: datetime) -> datetime | None:
        """The end of ``hall``'s current opening (open now) or of its next one (closed now):
        when "today" ends for the paper alerts. None for no (valid) hours, a hall open
        around the clock, or no opening in sight."""
        status = self.status(hall, now)  # reloads the hours when due
        if status is ALWAYS_OPEN or hall is None:
            return None
        with self._lock:
            hours = self._hours.get(hall)
        start = now if status.open else status.opens_at
        if hours is None or start is None:
            return None
        window = next_closed_window(hours, start)
        return None if window is None else window[0]

    def __call__(self, hall: str | None) -> tuple[bool, float | None]:
        """(open now, seconds until it next opens: 0 while open, None if not in sight)."""
        now = self._clock()
        status = self.status(hall, now)
        return status.open, status.opens_in_s(now)

    def _maybe_reload(self, now: datetime) -> None:
        if self._loaded_at is not None and now - self._loaded_at < self._refresh:
            return
        try:
            hours, invalid = self._load()
        except ServerError as exc:
            log.warning("opening hours not reloaded, keeping the previous ones: %s", exc)
            self._loaded_at = now  # retry after refresh_s, not at every scrape
            return
        if invalid:
            log.warning("stored opening hours invalid, treated as always open: %s", invalid)
        self._hours = dict(hours)
        self._statuses = {}
        self._loaded_at = now
