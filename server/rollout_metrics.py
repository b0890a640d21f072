"""Rollout progress for Prometheus: per-rollout gauges computed at scrape time, bounded.

The rollout service (``server.rollout_service``) hands every planner step to a
``RolloutBoard`` (``note``); the board keeps one frozen ``RolloutReading`` per
rollout (counts already taken, so a scrape costs the number of series, never the
number of terminals) and yields, at every scrape:

- ``kioskfleet_rollout_terminals{rollout,phase,state}``: the planner's terminals of
  the rollout by phase (``0`` is the first phase, ``none`` for terminals not yet
  admitted to one) and per-terminal state (the wire's ``UpdateState`` values); a
  (phase, state) pair with no terminal has no series;
- ``kioskfleet_rollout_status{rollout,status}``: 1 for the rollout's status, 0 for the
  five others (the planner's ``RolloutStatus``: awaiting_approval, running, paused,
  aborted, canceled, completed);
- ``kioskfleet_rollout_phase{rollout}``: the current phase index (0 is the first);
- ``kioskfleet_rollout_last_progress_timestamp_seconds{rollout}``: Unix time of the last
  progress (``progressed``): a terminal's report the planner accepted, a phase advance, a
  gate opening, the start (approval) or a resume. What ``RolloutStalled`` watches.

The bound (``RolloutMetricsBound``): every unsettled rollout (active, or stopped while
notified terminals still report: operators create those, a handful at a time), plus the
``finished_max`` (20) most recently settled finished ones (aborted, canceled or
completed, every terminal final), and those only for ``finished_window_s`` (1 h) after they
settled. Older ones are dropped from memory, so the series never grow with the rollout
history (``tests/unit/test_rollout_metrics.py::
test_many_finished_rollouts_leave_a_bounded_number_of_series``).

Progress is not persisted: after a server restart a rollout's clock starts at the first
step the new process takes (``load``), which delays ``RolloutStalled`` by at most its
threshold, never fires it. Pure except for the board's lock; no I/O; registers nothing
by itself (the server registers the board on its registry).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.rollout_planner import (
    Action,
    Event,
    GateOpened,
    PhaseAdvanced,
    Refused,
    Report,
    Resumed,
    Rollout,
    RolloutStatus,
    Started,
)

__all__ = [
    "NO_PHASE",
    "ROLLOUT_METRIC_NAMES",
    "RolloutBoard",
    "RolloutMetricsBound",
    "RolloutReading",
    "exported",
    "progressed",
    "reading_of",
    "rollout_families",
]

NO_PHASE: Final = "none"
"""``phase`` label of terminals selected but not yet admitted to a phase."""

_TERMINALS: Final = "kioskfleet_rollout_terminals"
_STATUS: Final = "kioskfleet_rollout_status"
_PHASE: Final = "kioskfleet_rollout_phase"
_PROGRESS: Final = "kioskfleet_rollout_last_progress_timestamp_seconds"

ROLLOUT_METRIC_NAMES: Final = (_TERMINALS, _STATUS, _PHASE, _PROGRESS)
"""Every family the board yields (always, with or without samples)."""

_HELP: Final = {
    _TERMINALS: "Terminals of the rollout by phase (0 is the first, none: not yet admitted)"
    " and per-terminal update state; no series for a pair with no terminal.",
    _STATUS: "1 for the rollout's status, 0 for the others (awaiting_approval, running,"
    " paused, aborted, canceled, completed).",
    _PHASE: "The rollout's current phase index (0 is the first phase).",
    _PROGRESS: "Unix time of the rollout's last progress: an accepted terminal report, a"
    " phase advance, a gate opening, the start or a resume.",
}
_LABELS: Final = {
    _TERMINALS: ("rollout", "phase", "state"),
    _STATUS: ("rollout", "status"),
    _PHASE: ("rollout",),
    _PROGRESS: ("rollout",),
}
_FINISHED: Final = frozenset(
    {RolloutStatus.ABORTED, RolloutStatus.CANCELED, RolloutStatus.COMPLETED}
)
_PROGRESS_ACTIONS: Final = (Started, Resumed, PhaseAdvanced, GateOpened)


@dataclass(frozen=True, slots=True)
class RolloutMetricsBound:
    """Which finished rollouts keep their series: the ``finished_max`` most recently
    settled, for ``finished_window_s`` after they settled (unsettled ones always)."""

    finished_window_s: float = 3600.0
    finished_max: int = 20


@dataclass(frozen=True, slots=True)
class RolloutReading:
    """One rollout as the gauges show it."""

    rollout_id: str
    status: RolloutStatus
    phase: int
    terminals: Mapping[tuple[str, str], int]  # (phase label, state) -> terminals
    last_progress: datetime
    settled_at: datetime | None  # None until finished and every terminal final


def reading_of(
    rollout: Rollout, *, last_progress: datetime, settled_at: datetime
) -> RolloutReading:
    """``rollout``'s counts and bookkeeping (one pass over its terminals); ``settled_at`` is
    kept only when the rollout is settled (finished, every terminal final)."""
    counts = Counter(
        (NO_PHASE if t.phase is None else str(t.phase), t.state.value) for t in rollout.terminals
    )
    settled = rollout.status in _FINISHED and all(rollout.is_final(t) for t in rollout.terminals)
    return RolloutReading(
        rollout_id=rollout.definition.rollout_id,
        status=rollout.status,
        phase=rollout.phase,
        terminals=dict(counts),
        last_progress=last_progress,
        settled_at=settled_at if settled else None,
    )


def progressed(events: Iterable[Event], actions: Iterable[Action]) -> bool:
    """True when a step made progress: a ``Report`` the planner accepted, or a start, resume,
    phase advance or gate opening among its actions. Planner-made moves (notify, time-out,
    retry) are not progress: a rollout whose terminals never answer must look stalled."""
    actions = list(actions)
    refused = {id(a.event) for a in actions if isinstance(a, Refused)}
    if any(isinstance(e, Report) and id(e) not in refused for e in events):
        return True
    return any(isinstance(a, _PROGRESS_ACTIONS) for a in actions)


def exported(
    readings: Iterable[RolloutReading], now: datetime, bound: RolloutMetricsBound
) -> list[RolloutReading]:
    """The readings that keep series at ``now``: every unsettled one, then the
    ``bound.finished_max`` most recently settled ones still within the window."""
    keep: list[RolloutReading] = []
    settled: list[tuple[datetime, RolloutReading]] = []
    oldest = now - timedelta(seconds=bound.finished_window_s)
    for reading in readings:
        if reading.settled_at is None:
            keep.append(reading)
        elif reading.settled_at >= oldest:
            settled.append((reading.settled_at, reading))
    settled.sort(key=lambda pair: (pair[0], pair[1].rollout_id), reverse=True)
    return keep + [reading for _, reading in settled[: bound.finished_max]]


def rollout_families(readings: Iterable[RolloutReading]) -> list[Metric]:
    """The four families for ``readings`` (pure; what ``RolloutBoard.collect`` yields)."""
    out = {name: GaugeMetricFamily(name, _HELP[name], labels=_LABELS[name]) for name in _HELP}
    for r in sorted(readings, key=lambda r: r.rollout_id):
        for (phase, state), n in sorted(r.terminals.items()):
            out[_TERMINALS].add_metric([r.rollout_id, phase, state], n)
        for status in RolloutStatus:
            out[_STATUS].add_metric([r.rollout_id, status.value], int(status is r.status))
        out[_PHASE].add_metric([r.rollout_id], r.phase)
        out[_PROGRESS].add_metric([r.rollout_id], r.last_progress.timestamp())
    return list(out.values())


class RolloutBoard(Collector):
    """The latest reading of each rollout, fed by the rollout service; a collector.

    Thread-safe: the service notes from its tick and API threads, the scrape reads."""

    def __init__(
        self,
        bound: RolloutMetricsBound | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._bound = bound or RolloutMetricsBound()
        self._clock = clock
        self._lock = threading.Lock()
        self._readings: dict[str, RolloutReading] = {}

    def note(self, rollout: Rollout, *, now: datetime, progressed: bool) -> None:
        """``rollout`` as stepped at ``now``; ``progressed`` (see ``progressed``) moves its
        progress clock to ``now`` (a rollout seen for the first time starts it at ``now``)."""
        rollout_id = rollout.definition.rollout_id
        with self._lock:
            before = self._readings.get(rollout_id)
            last = now if progressed or before is None else before.last_progress
            settled_at = now if before is None or before.settled_at is None else before.settled_at
            self._readings[rollout_id] = reading_of(
                rollout, last_progress=last, settled_at=settled_at
            )
            self._prune(now)

    def load(self, rollouts: Iterable[tuple[Rollout, datetime]], *, now: datetime) -> None:
        """Seed with stored rollouts the board has not seen yet, e.g. on the first tick after a
        start, each with its last stored change (for a settled one: when it settled); their
        progress clock starts at ``now``."""
        with self._lock:
            for rollout, changed_at in rollouts:
                rollout_id = rollout.definition.rollout_id
                if rollout_id not in self._readings:
                    self._readings[rollout_id] = reading_of(
                        rollout, last_progress=now, settled_at=changed_at
                    )
            self._prune(now)

    def readings(self) -> list[RolloutReading]:
        """What the next scrape shows."""
        now = self._clock()
        with self._lock:
            return exported(self._readings.values(), now, self._bound)

    def _prune(self, now: datetime) -> None:
        kept = exported(self._readings.values(), now, self._bound)
        if len(kept) != len(self._readings):
            self._readings = {r.rollout_id: r for r in kept}

    def describe(self) -> Iterator[Metric]:
        """The families without samples (lets the registry check names without a scrape)."""
        for name in ROLLOUT_METRIC_NAMES:
            yield GaugeMetricFamily(name, _HELP[name], labels=_LABELS[name])

    def collect(self) -> Iterator[Metric]:
        yield from rollout_families(self.readings())
