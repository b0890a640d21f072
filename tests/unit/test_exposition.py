"""``server.exposition.exposition`` writes exactly what ``generate_latest`` writes."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.exposition import exposition
from server.fleet_collector import FleetCollector
from server.fleet_state import FleetState
from server.metrics import ServerMetrics
from tests.support.fleet_messages import at, periph, report, state


class Families(Collector):
    def __init__(self, *families: Metric) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def test_a_fleet_with_awkward_fault_codes_is_written_byte_for_byte() -> None:
    """Halls are plain by the wire's pattern; fault codes are any printable text."""
    fleet = FleetState()
    halls = ["Hall A", "Hall.B", "Hall:C-1", "9", "Hall A "]
    for n, hall in enumerate(halls):
        for k in range(4):
            tid = f"T-{n}-{k}"
            jammed = periph("printer", "receipt_printer", "jam", fault_code=f'E"{k}\\x')
            fleet.apply(report(tid, 1, hall=hall, region=f"R{n % 2}", peripherals=[jammed]), at(0))
            if k % 2:
                fleet.apply(state(tid, False), at(1))
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))

    text = exposition(registry)
    assert text == generate_latest(registry)
    assert b'fault_code="E\\"0\\\\x"' in text  # the awkward values really are in it
    assert b'hall="Hall:C-1"' in text


def test_the_servers_own_counters_histograms_and_process_collectors_are_written_byte_for_byte() -> None:  # fmt: skip
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    ServerMetrics(registry)
    Counter("kf_test_things", "things", ["kind"], registry=registry).labels("a").inc(3)
    Histogram("kf_test_seconds", "seconds", registry=registry).observe(0.2)
    Summary("kf_test_sizes", "sizes", registry=registry).observe(7)
    Info("kf_test_build", "build", registry=registry).info({"version": "1.0"})
    Enum("kf_test_phase", "phase", states=["a", "b"], registry=registry).state("b")
    gauge = Gauge("kf_test_level", "level", ["zone"], registry=registry)
    gauge.labels('z"1').set(float("inf"))
    gauge.labels("z2").set(float("nan"))
    Gauge("kf_test_plain", "no labels", registry=registry).set(123456789.5)

    snapshot = CollectorRegistry()  # one reading: the process's CPU seconds move on meanwhile
    snapshot.register(Families(*registry.collect()))
    text = exposition(snapshot)
    assert text == generate_latest(snapshot)
    assert b"process_cpu_seconds_total " in text
    assert b"kf_test_seconds_bucket{" in text
    assert b"kf_test_things_total{" in text


def test_families_the_fast_path_must_leave_to_prometheus_client_are_still_written_the_same() -> None:  # fmt: skip
    stamped = GaugeMetricFamily("kf_stamped", "with a timestamp", labels=["a"])
    stamped.add_metric(["x"], 1.0, timestamp=1700000000.5)
    dotted = GaugeMetricFamily("kf_dotted", "a label name that needs quoting", labels=["a.b"])
    dotted.add_metric(["x"], 2.0)
    mixed = GaugeMetricFamily("kf_mixed", "samples with different label names")
    mixed.add_metric([], 3.0)
    mixed.samples.append(mixed.samples[0]._replace(labels={"other": "y"}))
    newline = GaugeMetricFamily("kf_newline", "a label name ending in a newline", labels=["b\n"])
    newline.add_metric(["x"], 5.0)
    empty = GaugeMetricFamily("kf_empty", "no samples", labels=["a"])
    counted = CounterMetricFamily("kf_counted", "a counter family", labels=["a"])
    counted.add_metric(["x"], 4.0)
    registry = CollectorRegistry()
    registry.register(Families(stamped, dotted, mixed, newline, empty, counted))

    assert exposition(registry) == generate_latest(registry)


printable = st.characters(codec="utf-8")  # any text that can be encoded: no lone surrogates
label_values = st.text(alphabet=printable, max_size=12)
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12))


@settings(max_examples=200, deadline=None)
@given(
    doc=st.text(alphabet=printable, max_size=30),
    rows=st.lists(st.tuples(label_values, label_values, values), max_size=20),
)
def test_any_gauge_family_is_written_as_generate_latest_writes_it(
    doc: str, rows: list[tuple[str, str, float]]
) -> None:
    family = GaugeMetricFamily("kf_any", doc, labels=["zone", "hall"])  # unsorted on purpose
    for zone, hall, value in rows:
        family.add_metric([zone, hall], value)
    registry = CollectorRegistry()
    registry.register(Families(family))

    assert exposition(registry) == generate_latest(registry)
