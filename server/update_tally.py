"""How many terminals stand in each update state, for Prometheus.

- ``kioskfleet_update_terminals{state}`` (gauge, computed at scrape time): terminals whose
  latest update status (the newest ``kf.update`` they sent, whatever the rollout) is in
  ``state``; one series for each of the 14 ``UpdateState`` values, 0 included.
- ``kioskfleet_update_statuses_total{state}`` (counter): update statuses accepted, by
  state; what the ``UpdateRolledBack`` alert watches (``increase(...{state="rolled_back"}
  [15m]) > 0``), since a gauge can miss a rollback followed by a retry between scrapes.

The rollout id is not a label: rollouts are unbounded over the server's life, and every
one would leave 14 series behind. The per-rollout counts are the API's
(``GET /api/v1/rollouts/{id}/terminals``). The tally lives in memory, fed by the ingest
(``note``) and seeded from the database at start (``load`` with
``server.update_status_store.latest_states``). Registered on the registry passed in;
nothing at import time; no I/O.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.update_status import UpdateState

__all__ = ["UPDATE_STATES", "UpdateTally"]

UPDATE_STATES: Final = tuple(s.value for s in UpdateState)


class UpdateTally(Collector):
    """The latest update state of each terminal, exported as counts per state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, str] = {}
        self.statuses = Counter(
            "kioskfleet_update_statuses",
            "Update statuses (kf.update) accepted, by state.",
            ["state"],
            registry=registry,
        )
        self._children = {state: self.statuses.labels(state) for state in UPDATE_STATES}
        registry.register(self)

    def load(self, latest: Mapping[str, str]) -> None:
        """Replace the tally with ``latest`` (terminal id -> state), e.g. at start."""
        with self._lock:
            self._latest = {tid: s for tid, s in latest.items() if s in self._children}

    def note(self, terminal_id: str, state: str) -> None:
        """The terminal sent a status in ``state`` (an UpdateState value). Cheap."""
        child = self._children.get(state)
        if child is None:
            return
        child.inc()
        with self._lock:
            self._latest[terminal_id] = state

    def forget(self, terminal_id: str) -> None:
        """The terminal left the fleet (decommissioned)."""
        with self._lock:
            self._latest.pop(terminal_id, None)

    def counts(self) -> dict[str, int]:
        """Terminals per state, every state present."""
        with self._lock:
            tally = Tally(self._latest.values())
        return {state: tally.get(state, 0) for state in UPDATE_STATES}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kioskfleet_update_terminals",
            "Terminals by the state of their latest update status (any rollout).",
            labels=["state"],
        )
        for state, count in self.counts().items():
            family.add_metric([state], count)
        yield family
