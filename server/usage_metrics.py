"""Usage metrics: citizen transactions by hall and service, and what each hall can offer.

- ``kioskfleet_usage_transactions_total{region,hall,service,outcome}`` (counter): accepted
  ``kf.usage`` transactions. ``service`` is the code when it is in the service catalogue,
  else ``other`` (``ServiceStore.label``): what a device sends never becomes an unbounded
  label; the series are bounded by halls x (catalogue + 1) x 3 outcomes.
- ``kioskfleet_usage_refused_total{reason}`` (counter): messages on the ``usage`` channel
  the ingest refused (``reason``: the protocol's reject reasons, a closed set); they are
  in ``kioskfleet_ingest_rejected_total`` too, which does not say the channel.
- ``kioskfleet_hall_services_available{region,hall,service}`` (gauge, at scrape time):
  terminals of the hall that can offer the catalogued service now
  (``server.service_catalogue.services_available``), zeros included: halls x catalogue
  series. Working it out visits every terminal, so it is recomputed at most every
  ``refresh_s`` (default 60 s: "minute by minute") and served from that reading between;
  a scrape's cost otherwise follows the number of series. The server exports it from the
  job-lease holder only (``server.holder_only``): every replica sees the same fleet.

Accepted ``kf.usage`` messages are counted in ``kioskfleet_ingest_messages_total{channel=
"usage"}`` like every channel. A hall or region never stated is ``unknown``
(``server.fleet_collector.UNKNOWN_LABEL``). Registered on the registry passed in; no I/O.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.fleet_collector import UNKNOWN_LABEL
from server.fleet_state import FleetState
from server.fleet_views import TerminalFilter
from server.service_catalogue import Catalogue, Need, offered, working_needs

__all__ = ["USAGE_METRIC_NAMES", "ServiceAvailabilityCollector", "UsageMetrics"]

_AVAILABLE: Final = "kioskfleet_hall_services_available"
USAGE_METRIC_NAMES: Final = (
    "kioskfleet_usage_transactions_total",
    "kioskfleet_usage_refused_total",
    _AVAILABLE,
)
_PAGE: Final = 5000


class UsageMetrics:
    """The two usage counters, on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transactions = Counter(
            "kioskfleet_usage_transactions",
            "Citizen transactions accepted (kf.usage), by hall, service (the code when"
            " catalogued, else other) and outcome.",
            ["region", "hall", "service", "outcome"],
            registry=registry,
        )
        self.refused = Counter(
            "kioskfleet_usage_refused",
            "Messages on the usage channel refused by the ingest, by reason.",
            ["reason"],
            registry=registry,
        )


class ServiceAvailabilityCollector(Collector):
    """``kioskfleet_hall_services_available`` from the fleet and the current catalogue."""

    def __init__(
        self,
        fleet: FleetState,
        catalogue: Callable[[], Catalogue],
        *,
        refresh_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fleet = fleet
        self._catalogue = catalogue
        self._refresh_s = refresh_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._computed_at: float | None = None
        self._reading: dict[tuple[str, str, str], int] = {}

    def reading(self) -> dict[tuple[str, str, str], int]:
        """(region, hall, service) → terminals offering it, at most ``refresh_s`` old."""
        with self._lock:
            now = self._monotonic()
            if self._computed_at is None or now - self._computed_at >= self._refresh_s:
                self._reading = self._compute()
                self._computed_at = now
            return dict(self._reading)

    def _compute(self) -> dict[tuple[str, str, str], int]:
        catalogue = self._catalogue()
        # terminals per (hall, set of working needs): few distinct sets, each worked out once
        groups: Tally[tuple[str, str, frozenset[Need]]] = Tally()
        halls: set[tuple[str, str]] = set()
        cursor: str | None = None
        while True:
            page = self._fleet.query(TerminalFilter(), limit=_PAGE, cursor=cursor)
            for view in page.items:
                where = (view.region or UNKNOWN_LABEL, view.hall or UNKNOWN_LABEL)
                halls.add(where)
                if view.online:  # an offline terminal offers nothing, not even needless services
                    groups[(*where, working_needs(view))] += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        codes: dict[frozenset[Need], tuple[str, ...]] = {}
        counts: Tally[tuple[str, str, str]] = Tally()
        for (region, hall, working), n in groups.items():
            if working not in codes:
                codes[working] = offered(catalogue, working)
            for code in codes[working]:
                counts[(region, hall, code)] += n
        return {
            (region, hall, s.code): counts[(region, hall, s.code)]
            for region, hall in sorted(halls)
            for s in catalogue.services
        }

    def describe(self) -> Iterator[Metric]:
        """The family without samples (what a standby replica yields; reads nothing)."""
        yield _available_family()

    def collect(self) -> Iterator[Metric]:
        family = _available_family()
        for (region, hall, service), n in self.reading().items():
            family.add_metric([region, hall, service], n)
        yield family


def _available_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        _AVAILABLE,
        "Terminals of the hall that can offer the catalogued service now (online, every"
        " peripheral the service needs working); recomputed at most every minute.",
        labels=["region", "hall", "service"],
    )
