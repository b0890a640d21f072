"""The scheduled analytics rollup (issue 14): every ``usage_rollup_interval_s`` it rolls up
the raw transactions that arrived since the last run (``UsageRollupStore.roll_up``, exactly
once by a watermark) and samples what each hall can offer (``add_availability``).

Availability sampling: at each tick, for each hall and catalogued service (the reading of
``kioskfleet_hall_services_available``, at most ``services_metrics_refresh_s`` old), the
seconds since the previous tick (at most twice the interval: a server that was down
counts nothing for the time it was down) are added to the current UTC hour's ``open_s``
when the hall is open now (its opening hours; a hall without hours is always open), and
to ``available_s`` when it is open and at least one of its terminals can offer the
service. So availability is a sample at the tick's resolution, not an exact integral.

A database error is logged and counted (``kioskfleet_db_errors_total``); the next run picks
up where the watermark is. No decisions here: the figures are ``server.analytics``'s.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from server.analytics import hour_start
from server.errors import FencedOffError, StorageError
from server.fleet_collector import UNKNOWN_LABEL
from server.fleet_state import FleetState
from server.metrics import ServerMetrics
from server.usage_rollup_store import UsageRollupStore

__all__ = ["UsageRollupJob"]

log = logging.getLogger(__name__)


class UsageRollupJob:
    """One rollup and one availability sample per ``run``; one run at a time."""

    def __init__(
        self,
        store: UsageRollupStore,
        fleet: FleetState,
        metrics: ServerMetrics,
        *,
        offered: Callable[[], Mapping[tuple[str, str, str], int]],
        hall_open: Callable[[str | None], bool],
        clock: Callable[[], datetime],
        interval_s: float,
    ) -> None:
        """``offered``: (region, hall, service) → terminals offering it now;
        ``hall_open(hall)``: whether the hall is open now."""
        self._store = store
        self._fleet = fleet
        self._metrics = metrics
        self._offered = offered
        self._hall_open = hall_open
        self._clock = clock
        self._interval = timedelta(seconds=interval_s)
        self._last_tick: datetime | None = None
        self._lock = threading.Lock()

    def _hall_of(self, terminal_id: str) -> str | None:
        view = self._fleet.get(terminal_id)
        return None if view is None else view.hall

    def run(self) -> int:
        """Roll up and sample; returns the raw rows rolled up (0 after a database error)."""
        with self._lock:
            try:
                done = self._store.roll_up(self._hall_of)
            except FencedOffError:  # another replica holds the job lease now: it samples
                return 0
            except StorageError as exc:
                self._metrics.db_errors.inc()
                log.warning("rolling up usage failed, will retry: %s", exc)
                done = 0
            try:
                self._sample()
            except FencedOffError:
                pass  # counted and logged by the lease; nothing was added
            except StorageError as exc:
                self._metrics.db_errors.inc()
                log.warning("sampling service availability failed: %s", exc)
            return done

    def _sample(self) -> None:
        now = self._clock()
        last, self._last_tick = self._last_tick, now
        elapsed = self._interval if last is None else min(now - last, 2 * self._interval)
        seconds = elapsed.total_seconds()
        if seconds <= 0:
            return
        sample: defaultdict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        open_halls: dict[str, bool] = {}
        for (_region, hall, service), n in self._offered().items():
            if hall not in open_halls:
                open_halls[hall] = self._hall_open(None if hall == UNKNOWN_LABEL else hall)
            if open_halls[hall]:
                sample[(hall, service)][0] += seconds
                if n > 0:
                    sample[(hall, service)][1] += seconds
        self._store.add_availability(
            hour_start(now), {k: (o, min(a, o)) for k, (o, a) in sample.items()}
        )
