"""What is in maintenance now, for the metrics collector at scrape time.

``MaintenanceBook(load, refresh_s=..., clock=...)`` keeps the windows active at the last
load in memory (bounded by ``maintenance_max_windows``) and answers ``book() -> ActiveMaintenance`` without touching the database:
the windows are reloaded with one query at most every ``refresh_s`` seconds, and on the
next call after ``invalidate()`` (the maintenance API calls it on every change; the
CLI goes through the API, so nothing else writes them). A window ends at its ``until``
by the clock, not by a reload: the book filters the windows it holds at every call.

A reload that fails keeps the windows already held and is logged: a database outage
neither starts nor ends a maintenance by itself (except by ``until``).

Never does: a database query per scrape; it holds no fleet state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from server.errors import ServerError
from server.maintenance import ActiveMaintenance, MaintenanceWindow, active_maintenance

__all__ = ["MaintenanceBook"]

log = logging.getLogger(__name__)


class MaintenanceBook:
    """The active maintenance now, from windows cached in memory (see the module doc).
    Thread-safe: scrapes and the API may call it at the same time."""

    def __init__(
        self,
        load: Callable[[], Sequence[MaintenanceWindow]],
        *,
        refresh_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        """Raises ValueError unless ``refresh_s`` > 0."""
        if refresh_s <= 0:
            raise ValueError("refresh_s must be > 0")
        self._load = load
        self._refresh = timedelta(seconds=refresh_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: tuple[MaintenanceWindow, ...] = ()
        self._loaded_at: datetime | None = None  # None: load at the next call

    def invalidate(self) -> None:
        """Reload the windows at the next call (they changed)."""
        with self._lock:
            self._loaded_at = None

    def __call__(self) -> ActiveMaintenance:
        now = self._clock()
        with self._lock:
            if self._loaded_at is None or now - self._loaded_at >= self._refresh:
                try:
                    self._windows = tuple(self._load())
                except ServerError as exc:
                    log.warning("maintenance windows not reloaded, keeping the previous: %s", exc)
                self._loaded_at = now
            windows = self._windows
        return active_maintenance(windows, now)
