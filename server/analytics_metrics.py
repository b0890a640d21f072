"""The analytics as Prometheus gauges, by hall and service only (docs/analytics.md):

Each over the last ``window`` (``analytics_metrics_window_days``, default 7 days):

- ``kioskfleet_hall_utilisation_ratio{region,hall}``: busy over opening time of the hall's
  terminals (``server.analytics_report``).
- ``kioskfleet_hall_idle_terminals{region,hall}``: how many of its terminals are idle (far below
  the hall's median), and ``kioskfleet_hall_overloaded{region,hall}`` (1 or 0).
- ``kioskfleet_hall_service_open_seconds{region,hall,service}`` and
  ``kioskfleet_hall_service_available_seconds{region,hall,service}``: the sampled opening time,
  and the part of it the service was offerable (availability is their ratio).
- ``kioskfleet_hall_turned_away_estimated{region,hall,service}``: citizens estimated turned away
  while the service was unavailable during opening hours.

The service gauges have a series for every hall x catalogued service, 0 included (and
``other`` for codes outside the catalogue when there are any).

Labels are bounded: ``hall`` is a hall of the fleet or the rollups, ``service`` the code
when it is in the catalogue, else ``other`` (``label``); there is no terminal label, so a
terminal's figures never leave the API. The figures read the database, so they are
recomputed at most every ``refresh_s`` (default 300 s) and served from that reading
between scrapes; a database error keeps the previous reading. Every replica reads the
same database, so the server exports these from the job-lease holder only
(``server.holder_only``): a standby neither reads nor exports them. No I/O of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.analytics_report import DEFAULT_SPAN, AnalyticsSources, report_range
from server.errors import StorageError
from server.fleet_collector import UNKNOWN_LABEL

__all__ = ["ANALYTICS_METRIC_NAMES", "AnalyticsCollector"]

log = logging.getLogger(__name__)

_HALL_GAUGES: Final = {
    "kioskfleet_hall_utilisation_ratio": "Busy over opening time of the hall's terminals,"
    " over the window.",
    "kioskfleet_hall_idle_terminals": "Terminals of the hall far below its median"
    " utilisation, over the window.",
    "kioskfleet_hall_overloaded": "1 when the hall's utilisation is above the overload"
    " threshold, over the window.",
}
_SERVICE_GAUGES: Final = {
    "kioskfleet_hall_service_open_seconds": "Sampled seconds the hall was open, over the window.",
    "kioskfleet_hall_service_available_seconds": "Sampled seconds the hall was open and the"
    " service offerable by at least one of its terminals, over the window.",
    "kioskfleet_hall_turned_away_estimated": "Citizens estimated turned away while the"
    " service was unavailable during opening hours, over the window.",
}
ANALYTICS_METRIC_NAMES: Final = (*_HALL_GAUGES, *_SERVICE_GAUGES)
_HELP: Final = {**_HALL_GAUGES, **_SERVICE_GAUGES}
_LABELS: Final = {
    **{name: ("region", "hall") for name in _HALL_GAUGES},
    **{name: ("region", "hall", "service") for name in _SERVICE_GAUGES},
}

_Reading = dict[str, dict[tuple[str, ...], float]]


class AnalyticsCollector(Collector):
    """The gauges above from ``sources``; ``label(code)``: the service label;
    ``services()``: the catalogue's codes; ``regions()``: hall → its region (the fleet's)."""

    def __init__(
        self,
        sources: AnalyticsSources,
        label: Callable[[str], str],
        services: Callable[[], Sequence[str]],
        regions: Callable[[], Mapping[str, str]],
        clock: Callable[[], datetime],
        *,
        refresh_s: float = 300.0,
        window: timedelta = DEFAULT_SPAN,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = sources
        self._label = label
        self._services = services
        self._regions = regions
        self._clock = clock
        self._refresh_s = refresh_s
        self._window = window
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._computed_at: float | None = None
        self._reading: _Reading = {name: {} for name in ANALYTICS_METRIC_NAMES}

    def reading(self) -> _Reading:
        """Metric name → label values → value, at most ``refresh_s`` old."""
        with self._lock:
            now = self._monotonic()
            if self._computed_at is None or now - self._computed_at >= self._refresh_s:
                try:
                    self._reading = self._compute()
                except StorageError as exc:
                    log.warning("analytics metrics keep their last reading: %s", exc)
                self._computed_at = now
            return {name: dict(values) for name, values in self._reading.items()}

    def _compute(self) -> _Reading:
        now = self._clock()
        r = report_range(now - self._window, now, now)
        use = self._sources.utilisation(r)
        out: _Reading = {name: {} for name in ANALYTICS_METRIC_NAMES}
        idle: defaultdict[str, int] = defaultdict(int)
        for terminal, _median in use.idle:
            idle[terminal.hall] += 1
        overloaded = {h.hall for h in use.overloaded}
        for hall in use.halls:
            if hall.utilisation is not None:
                out["kioskfleet_hall_utilisation_ratio"][(hall.hall,)] = hall.utilisation
            out["kioskfleet_hall_idle_terminals"][(hall.hall,)] = idle[hall.hall]
            out["kioskfleet_hall_overloaded"][(hall.hall,)] = float(hall.hall in overloaded)
        zeros: dict[tuple[str, ...], float] = {
            (h.hall, code): 0.0 for h in use.halls for code in self._services()
        }
        opened, offered, lost = dict(zeros), dict(zeros), dict(zeros)
        for hall_id, code, open_s, up_s in self._sources.availability_shares(r):
            key = (hall_id, self._label(code))
            opened[key] = opened.get(key, 0.0) + open_s
            offered[key] = offered.get(key, 0.0) + up_s
        for t in self._sources.turned_away(r):
            key = (t.hall, self._label(t.service))
            lost[key] = lost.get(key, 0.0) + t.estimated
        out["kioskfleet_hall_service_open_seconds"] = dict(opened)
        out["kioskfleet_hall_service_available_seconds"] = dict(offered)
        out["kioskfleet_hall_turned_away_estimated"] = dict(lost)
        return out

    def describe(self) -> Iterator[Metric]:
        """The families without samples: registering (and a standby replica's scrape) must
        not read the database (it may not be open yet)."""
        for name, labels in _LABELS.items():
            yield GaugeMetricFamily(name, _HELP[name], labels=labels)

    def collect(self) -> Iterator[Metric]:
        reading = self.reading()
        regions = self._regions()
        for name, labels in _LABELS.items():
            family = GaugeMetricFamily(name, _HELP[name], labels=labels)
            for values, value in sorted(reading[name].items()):
                family.add_metric([regions.get(values[0], UNKNOWN_LABEL), *values], value)
            yield family
