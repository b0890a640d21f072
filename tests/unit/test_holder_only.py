"""Fleet-wide gauges from the job-lease holder only (``server.holder_only``): the fleet,
service, paper and analytics gauges, each wrapped the one same way, are empty on a
standby (which computes nothing), full on the holder from its first scrape, and summed
over replicas count the fleet once.

Series are read back from the real text exposition, as Prometheus scrapes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server.analytics_metrics import ANALYTICS_METRIC_NAMES, AnalyticsCollector
from server.analytics_report import AnalyticsSources
from server.fleet_collector import FLEET_METRIC_NAMES, FleetCollector
from server.hall_openings import HallOpenings
from server.holder_only import DescribedCollector, HolderOnly
from server.maintenance import NO_MAINTENANCE
from server.metrics import ServerMetrics
from server.paper_metrics import PAPER_METRIC_NAMES, PaperCollector
from server.service_catalogue import Catalogue
from server.usage_metrics import ServiceAvailabilityCollector
from tests.support.fleet_messages import T0
from tests.unit.test_fleet_collector import Series, _small_fleet, only, scrape
from tests.unit.test_paper_tracker import _Hours, _paper_low_at_ten_pages_an_hour
from tests.unit.test_service_catalogue import CATALOGUE


class _LeaseStub:
    """The one thing the wrapper asks of the job lease: does this replica hold it now."""

    def __init__(self, held: bool = False) -> None:
        self.holding = held

    def held(self) -> bool:
        return self.holding


@dataclass(frozen=True)
class _Gauges:
    """One wrapped collector, and how often it read its sources (fleet, catalogue, clock)."""

    collector: DescribedCollector
    reads: list[int]
    names: tuple[str, ...]


def _fleet_gauges() -> _Gauges:
    reads: list[int] = []
    collector = FleetCollector(_small_fleet(), on_lock_held=lambda _s: reads.append(1))
    return _Gauges(collector, reads, FLEET_METRIC_NAMES)


def _service_gauges() -> _Gauges:
    reads: list[int] = []

    def catalogue() -> Catalogue:
        reads.append(1)
        return CATALOGUE

    collector = ServiceAvailabilityCollector(_small_fleet(), catalogue, refresh_s=0)
    return _Gauges(collector, reads, ("kioskfleet_hall_services_available",))


def _paper_gauges() -> _Gauges:
    fleet, tracker = _paper_low_at_ten_pages_an_hour()
    now = T0 + timedelta(seconds=2)
    tracker.refresh(now)
    reads: list[int] = []

    def clock() -> datetime:
        reads.append(1)
        return now

    openings = HallOpenings(_Hours({}).all, refresh_s=60, clock=lambda: now)
    collector = PaperCollector(tracker, fleet, openings, lambda: NO_MAINTENANCE, clock=clock)
    return _Gauges(collector, reads, PAPER_METRIC_NAMES)


def _analytics_gauges() -> _Gauges:
    reads: list[int] = []

    def terminals() -> dict[str, str]:
        reads.append(1)
        return {"T-1": "Hall A", "T-2": "Hall A", "T-3": "Hall B"}

    sources = AnalyticsSources(
        rows=lambda *_: [], availability=lambda *_: {}, hours=dict, terminals=terminals
    )
    collector = AnalyticsCollector(
        sources,
        lambda code: code,
        lambda: ["tax.invoice.print"],
        lambda: {"Hall A": "North", "Hall B": "North"},
        lambda: datetime(2026, 12, 4, 12, tzinfo=UTC),
        refresh_s=0,
    )
    return _Gauges(collector, reads, ANALYTICS_METRIC_NAMES)


BUILDS: dict[str, Callable[[], _Gauges]] = {
    "fleet": _fleet_gauges,
    "services": _service_gauges,
    "paper": _paper_gauges,
    "analytics": _analytics_gauges,
}


def _bare(build: Callable[[], _Gauges]) -> Series:
    """What the collector exports with no lease in the way (a lone server holding it)."""
    registry = CollectorRegistry()
    registry.register(build().collector)
    return scrape(registry)


@pytest.mark.parametrize("kind", sorted(BUILDS))
def test_a_standby_exports_the_families_empty_and_a_new_holder_at_its_first_scrape(
    kind: str,
) -> None:
    gauges, expected = BUILDS[kind](), _bare(BUILDS[kind])
    assert expected  # the case has samples to lose
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)  # per-process series: every replica exports its own
    metrics.ingest_duplicates.inc(3)
    lease = _LeaseStub()
    registry.register(HolderOnly(gauges.collector, lease.held))
    standby = scrape(registry)
    assert not only(standby, *gauges.names)
    assert gauges.reads == []  # a standby computes nothing: no fleet, catalogue or database
    text = generate_latest(registry).decode()
    assert all(f"# TYPE {name} gauge" in text for name in gauges.names)  # empty, not gone
    assert standby[("kioskfleet_ingest_duplicates_total", frozenset())] == 3

    lease.holding = True  # took the lease over: the very next scrape exports the families
    holder = scrape(registry)
    assert only(holder, *gauges.names) == expected
    assert gauges.reads
    assert holder[("kioskfleet_ingest_duplicates_total", frozenset())] == 3

    lease.holding = False  # lost it (another replica took over): empty again
    assert not only(scrape(registry), *gauges.names)


@pytest.mark.parametrize("kind", sorted(BUILDS))
def test_three_replicas_scraped_together_count_once_before_and_after_a_takeover(
    kind: str,
) -> None:
    leases = [_LeaseStub(held=i == 0) for i in range(3)]
    registries = []
    for lease in leases:  # every replica sees the same fleet and database
        registry = CollectorRegistry()
        registry.register(HolderOnly(BUILDS[kind]().collector, lease.held))
        registries.append(registry)
    once = _bare(BUILDS[kind])

    def summed() -> Series:
        out: Series = {}
        for registry in registries:
            for key, value in scrape(registry).items():
                out[key] = out.get(key, 0.0) + value
        return out

    assert summed() == once
    leases[0].holding = False  # the holder dies; its lease expires
    assert summed() == {}  # the takeover window: absent, never doubled
    leases[2].holding = True
    assert summed() == once
