"""Scheduled jobs: the offline sweep (silence → offline) and the event pruning, run by
APScheduler.

``OfflineSweep`` is the job: it asks the fleet state which online terminals
have been silent too long, queues their transitions for the database and counts
``kioskfleet_terminals_offline_detected_total{reason="timeout"}``. It does
nothing while the broker link is down (silence then proves nothing) and gives
every terminal a full grace period after each reconnect (the server passes
``listening_since``: the later of the broker connect and the recovery of
database writes, None while either is down, because the broker stops
delivering while acknowledgements wait for a commit). With ``writes``
(``ingest_ownership = "partition"``: it then runs on every replica) it records and
counts only the transitions of the terminals this replica writes; the others change
its fleet state only (their owner's sweep records them; docs/scale-out.md).

``RetentionPruner`` deletes rows past their retention period (the jobs ``server.retention``
builds from its one list of every table's retention).

``build_scheduler`` wires them into a ``BackgroundScheduler`` (``max_instances=1``,
``coalesce=True``); ``Server.start()`` starts it and ``Server.stop()`` shuts it
down. Nothing is scheduled at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from server.errors import FencedOffError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import OfflineReason, Transition
from server.ingest import WriteSink
from server.metrics import ServerMetrics

__all__ = ["OfflineSweep", "Retention", "RetentionPruner", "build_scheduler"]

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
        writes: Callable[[str], bool] | None = None,
    ) -> None:
        self._writes = writes
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
        with self._sink.applying():  # a flush never sees the state without its transition
            transitions = self._fleet.expire_silent(self._clock(), listening_since=since)
            if self._writes is not None:
                transitions = [t for t in transitions if self._writes(t.terminal_id)]
            for t in transitions:
                self._sink.record(t.terminal_id, transitions=(t,))
        if transitions:
            self._timeouts.inc(len(transitions))
            log.info("%d terminals went offline by timeout", len(transitions))
        return transitions


@dataclass(frozen=True, slots=True)
class Retention:
    """One table that grows and how long its rows are kept.

    ``prune(older_than=..., now=...)`` deletes what is older and returns how many rows;
    it raises StorageError.
    """

    name: str
    prune: Callable[..., int]
    keep: timedelta


class RetentionPruner:
    """Deletes rows past their retention, table by table; a database error is logged and
    counted and the next table is still pruned. A deletion refused by the job lease's fence
    (``server.lease_fence``: another replica holds the lease now) ends the run."""

    def __init__(
        self,
        retentions: Sequence[Retention],
        metrics: ServerMetrics,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._retentions = tuple(retentions)
        self._metrics = metrics
        self._clock = clock

    @property
    def retentions(self) -> tuple[Retention, ...]:
        """The tables it prunes, in order."""
        return self._retentions

    def run(self) -> dict[str, int]:
        """One pruning of every table; returns rows deleted per table (0 where it failed)."""
        out: dict[str, int] = {}
        for r in self._retentions:
            try:
                deleted = r.prune(older_than=r.keep, now=self._clock())
            except FencedOffError:  # counted and logged by the lease; the holder prunes now
                return out
            except StorageError as exc:
                self._metrics.db_errors.inc()
                log.warning("pruning old %s failed, will retry: %s", r.name, exc)
                deleted = 0
            if deleted:
                log.info("pruned %d %s older than %s", deleted, r.name, r.keep)
            out[r.name] = deleted
        return out


def build_scheduler(
    sweep: Callable[[], object],
    *,
    offline_check_interval_s: float,
    prune: Callable[[], object] | None = None,
    prune_interval_s: float = 3600.0,
) -> BackgroundScheduler:
    """A not-yet-started scheduler running ``sweep`` (``OfflineSweep.run``, or it under the
    job lease) every ``offline_check_interval_s`` and ``prune`` (``RetentionPruner.run``,
    if given) every ``prune_interval_s``, first right at start."""
    scheduler = BackgroundScheduler(timezone=UTC)
    if prune is not None:
        scheduler.add_job(
            prune,
            "interval",
            seconds=prune_interval_s,
            id="retention-prune",
            name="retention pruning",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
    scheduler.add_job(
        sweep,
        "interval",
        seconds=offline_check_interval_s,
        id="offline-sweep",
        name="offline sweep",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    return scheduler
