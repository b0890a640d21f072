"""Scheduled jobs: the offline sweep (silence → offline), run by APScheduler.

``OfflineSweep`` is the job: it asks the fleet state which online terminals
have been silent too long, queues their transitions for the database and counts
``kioskfleet_terminals_offline_detected_total{reason="timeout"}``. It does
nothing while the broker link is down (silence then proves nothing) and gives
every terminal a full grace period after each reconnect.

``build_scheduler`` wires it into a ``BackgroundScheduler`` (``max_instances=1``,
``coalesce=True``); ``Server.start()`` starts it and ``Server.stop()`` shuts it
down. Nothing is scheduled at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from server.fleet_state import FleetState, OfflineReason, Transition
from server.ingest import WriteSink
from server.metrics import ServerMetrics

__all__ = ["OfflineSweep", "build_scheduler"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OfflineSweep:
    """Marks silent terminals offline. Safe to call from any thread, one call at a time."""

    def __init__(
        self,
        fleet: FleetState,
        sink: WriteSink,
        metrics: ServerMetrics,
        *,
        listening_since: Callable[[], datetime | None],
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._fleet = fleet
        self._sink = sink
        self._listening_since = listening_since
        self._clock = clock
        self._timeouts = metrics.offline_detected.labels(OfflineReason.TIMEOUT.value)

    def run(self) -> list[Transition]:
        """One sweep; returns the transitions it made (none while the broker link is down)."""
        since = self._listening_since()
        if since is None:
            return []
        transitions = self._fleet.expire_silent(self._clock(), listening_since=since)
        for t in transitions:
            self._sink.record(t.terminal_id, transitions=(t,))
        if transitions:
            self._timeouts.inc(len(transitions))
            log.info("%d terminals went offline by timeout", len(transitions))
        return transitions


def build_scheduler(sweep: OfflineSweep, *, offline_check_interval_s: float) -> BackgroundScheduler:
    """A not-yet-started scheduler running ``sweep`` every ``offline_check_interval_s``."""
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        sweep.run,
        "interval",
        seconds=offline_check_interval_s,
        id="offline-sweep",
        name="offline sweep",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    return scheduler
