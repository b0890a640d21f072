"""The analytics as Prometheus gauges, by hall and service only (docs/analytics.md):

Each over the last ``window`` (``analytics_metrics_window_days``, default 7 days):

- ``kioskfleet_hall_utilisation_ratio{hall}``: busy over opening time of the hall's
  terminals (``server.analytics_report``).
- ``kioskfleet_hall_idle_terminals{hall}``: how many of its terminals are idle (far below
  the hall's median), and ``kioskfleet_hall_overloaded{hall}`` (1 or 0).
- ``kioskfleet_hall_service_availability_ratio{hall,service}``: share of the opening
  time the service was offerable (sampled halls and catalogued services only).
- ``kioskfleet_hall_turned_away_estimated{hall,service}``: citizens estimated turned away
  while the service was unavailable during opening hours.

Labels are bounded: ``hall`` is a hall of the fleet or the rollups, ``service`` the code
when it is in the catalogue, else ``other`` (``label``); there is no terminal label, so a
terminal's figures never leave the API. The figures read the database, so they are
recomputed at most every ``refresh_s`` (default 300 s) and served from that reading
between scrapes; a database error keeps the previous reading. No I/O of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.analytics_report import DEFAULT_SPAN, AnalyticsSources, report_range
from server.errors import StorageError

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
    "kioskfleet_hall_service_availability_ratio": "Share of the hall's opening time the"
    " service was offerable, over the window (sampled).",
    "kioskfleet_hall_turned_away_estimated": "Citizens estimated turned away while the"
    " service was unavailable during opening hours, over the window.",
}
ANALYTICS_METRIC_NAMES: Final = (*_HALL_GAUGES, *_SERVICE_GAUGES)

_Reading = dict[str, dict[tuple[str, ...], float]]


class AnalyticsCollector(Collector):
    """The gauges above from ``sources``; ``label(code)``: the service label."""

    def __init__(
        self,
        sources: AnalyticsSources,
        label: Callable[[str], str],
        clock: Callable[[], datetime],
        *,
        refresh_s: float = 300.0,
        window: timedelta = DEFAULT_SPAN,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = sources
        self._label = label
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
        shares: defaultdict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for hall_id, code, open_s, up_s in self._sources.availability_shares(r):
            acc = shares[(hall_id, self._label(code))]
            acc[0] += open_s
            acc[1] += up_s
        for key, (open_s, up_s) in shares.items():
            if open_s > 0:
                out["kioskfleet_hall_service_availability_ratio"][key] = up_s / open_s
        lost: defaultdict[tuple[str, ...], float] = defaultdict(float)
        for t in self._sources.turned_away(r):
            lost[(t.hall, self._label(t.service))] += t.estimated
        out["kioskfleet_hall_turned_away_estimated"] = dict(lost)
        return out

    def describe(self) -> Iterator[Metric]:
        """Nothing: registering must not read the database (it may not be open yet)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        reading = self.reading()
        for name, text in _HALL_GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=["hall"])
            for labels, value in sorted(reading[name].items()):
                family.add_metric(list(labels), value)
            yield family
        for name, text in _SERVICE_GAUGES.items():
            family = GaugeMetricFamily(name, text, labels=["hall", "service"])
            for labels, value in sorted(reading[name].items()):
                family.add_metric(list(labels), value)
            yield family
