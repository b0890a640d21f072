"""Paper forecast gauges, at scrape time from the tracker's last refresh (issue 14, item 4).

- ``kioskfleet_terminal_paper_eta_seconds{region,hall,terminal}``: seconds until the
  terminal's printer is forecast to run out of paper, only for printers forecast to run out
  within ``horizon_s`` (24 h) that are not out already (``PrinterPaperOut`` covers those)
  and not in maintenance (suppressed at the source like the other per-terminal series).
  Cardinality: at most one series per terminal, and in practice the few printers of the
  fleet that run out within a day (a roll lasts days), so it is bounded by the fleet size
  and follows the refills staff owe, not the traffic.
- ``kioskfleet_terminal_paper_eta_upper_seconds{region,hall,terminal}``: the late end of
  the forecast's interval, for the same series (absent when beyond the horizon).
- ``kioskfleet_hall_closes_in_seconds{region,hall}``: seconds until the end of the hall's
  current opening (open now) or of its next one (closed now), only for halls with an ETA
  series: bounded by the number of halls. A hall with no hours (always open) gets
  ``horizon_s``: "today" is then the next 24 hours.

The alerts ``PaperRunsOutToday`` and ``PaperRunsOutBeforeOpening`` compare the two
(``monitoring/prometheus/rules``). The ETA is aged to the scrape (``clock``): a forecast
computed a minute ago says a minute less. Every replica tracks the same paper, so the
server exports these from the job-lease holder only (``server.holder_only``). Registered
on the registry passed in; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.fleet_collector import UNKNOWN_LABEL
from server.fleet_state import FleetState
from server.hall_openings import HallOpenings
from server.maintenance import ActiveMaintenance
from server.paper_tracker import PaperTracker

__all__ = ["PAPER_METRIC_NAMES", "PaperCollector"]

_ETA: Final = "kioskfleet_terminal_paper_eta_seconds"
_UPPER: Final = "kioskfleet_terminal_paper_eta_upper_seconds"
_CLOSES: Final = "kioskfleet_hall_closes_in_seconds"
PAPER_METRIC_NAMES: Final = (_ETA, _UPPER, _CLOSES)
DAY_S: Final = 86400.0


class PaperCollector(Collector):
    """The three gauges above from ``tracker``, ``fleet`` (placement) and the hall hours."""

    def __init__(
        self,
        tracker: PaperTracker,
        fleet: FleetState,
        openings: HallOpenings,
        maintenance: Callable[[], ActiveMaintenance],
        *,
        clock: Callable[[], datetime],
        horizon_s: float = DAY_S,
    ) -> None:
        self._tracker = tracker
        self._fleet = fleet
        self._openings = openings
        self._maintenance = maintenance
        self._clock = clock
        self._horizon_s = horizon_s

    def describe(self) -> Iterator[Metric]:
        """The three families without samples (what a standby replica yields; reads nothing)."""
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        eta, upper, closes = _families()
        forecasts = self._tracker.forecasts()
        views = {v.id: v for v in self._fleet.snapshot(sorted(forecasts))}
        maintenance = self._maintenance() if forecasts else None
        halls: dict[tuple[str, str], str | None] = {}
        for tid, f in sorted(forecasts.items()):
            view = views.get(tid)
            if view is None or f.eta_s is None or f.remaining_pages == 0:
                continue
            if maintenance is not None and maintenance.covers(tid, view.hall):
                continue
            age = max((now - f.computed_at).total_seconds(), 0.0)
            left = max(f.eta_s - age, 0.0)
            if left > self._horizon_s:
                continue
            where = (view.region or UNKNOWN_LABEL, view.hall or UNKNOWN_LABEL)
            halls[where] = view.hall
            eta.add_metric([*where, tid], left)
            if f.eta_high_s is not None:
                upper.add_metric([*where, tid], max(f.eta_high_s - age, 0.0))
        for (region, hall), name in sorted(halls.items()):
            ends = self._openings.closes_at(name, now)
            left = self._horizon_s if ends is None else max((ends - now).total_seconds(), 0.0)
            closes.add_metric([region, hall], left)
        yield eta
        yield upper
        yield closes


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    eta = GaugeMetricFamily(
        _ETA,
        "Seconds until the terminal's printer is forecast to run out of paper; only"
        " printers forecast to run out within 24 h and not out yet.",
        labels=["region", "hall", "terminal"],
    )
    upper = GaugeMetricFamily(
        _UPPER,
        "The late end of the paper forecast's interval, for the same terminals.",
        labels=["region", "hall", "terminal"],
    )
    closes = GaugeMetricFamily(
        _CLOSES,
        "Seconds until the hall's current or next opening ends (24 h for a hall with no"
        " hours); only halls with a paper ETA series.",
        labels=["region", "hall"],
    )
    return eta, upper, closes
