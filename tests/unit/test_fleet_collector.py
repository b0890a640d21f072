"""The fleet collector: exact series for a small fleet, nothing per healthy terminal, and
incremental tallies that always equal a recount from scratch (Hypothesis).

Series are read back from the real text exposition (``generate_latest`` parsed
by ``prometheus_client.parser``), so what is checked is what Prometheus scrapes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kioskfleet import __version__
from protocol.messages import PeripheralCondition, PeripheralKind
from protocol.taxonomy import allowed_conditions, family_of
from server.fleet_collector import (
    FLEET_METRIC_NAMES,
    UNKNOWN_LABEL,
    FleetCollector,
    HallOpenings,
    LabelBudget,
    fleet_families,
)
from server.fleet_state import FleetState
from server.fleet_views import AGENT_PACKAGE, OfflineReason, TerminalFilter, TerminalView
from server.health import Health, closed_or, terminal_health
from server.maintenance import ActiveMaintenance, MaintenanceWindow, Scope, active_maintenance
from server.metrics import ServerMetrics
from tests.support.fleet_messages import (
    BOOT,
    PRINTER_OK,
    READER_OK,
    at,
    boot_event,
    periph,
    peripheral_event,
    report,
    state,
)

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
PER_TERMINAL = (
    "kioskfleet_terminal_offline",
    "kioskfleet_terminal_offline_since_timestamp_seconds",
    "kioskfleet_terminal_peripheral_problem",
)


def scrape(registry: CollectorRegistry) -> Series:
    """Every sample of the registry's text exposition, keyed by (name, labels)."""
    text = generate_latest(registry).decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def fleet_series(fleet: FleetState) -> Series:
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    return scrape(registry)


def s(name: str, value: float, **labels: str) -> Series:
    """One expected series; a peripheral series gets its kind's family label (the taxonomy's)."""
    if "kind" in labels:
        labels["family"] = family_of(PeripheralKind(labels["kind"])).family.value
    return {(name, frozenset(labels.items())): value}


def only(series: Series, *names: str) -> Series:
    return {k: v for k, v in series.items() if k[0] in names}


def terminals_series(
    region: str,
    hall: str,
    ok: int,
    warning: int,
    faulty: int,
    off: int,
    closed: int = 0,
    *,
    unreachable: bool = False,
) -> Series:
    """A hall's terminals by status, its opening gauges (open: no hours set) and whether
    it is unreachable."""
    out: Series = {}
    counts = (("ok", ok), ("warning", warning), ("faulty", faulty), ("offline", off))
    for status, n in (*counts, ("closed", closed)):
        out |= s("kioskfleet_terminals", n, region=region, hall=hall, status=status)
    out |= s("kioskfleet_hall_maintenance", 0, region=region, hall=hall)
    out |= s("kioskfleet_hall_unreachable", 1 if unreachable else 0, region=region, hall=hall)
    return out | hall_series(region, hall, is_open=True, opens_in=0)


def hall_series(region: str, hall: str, *, is_open: bool, opens_in: float | None) -> Series:
    out = s("kioskfleet_hall_open", 1 if is_open else 0, region=region, hall=hall)
    if opens_in is not None:
        out |= s("kioskfleet_hall_opens_in_seconds", opens_in, region=region, hall=hall)
    return out


def peripherals_series(region: str, hall: str, counts: dict[tuple[str, str], int]) -> Series:
    out: Series = {}
    for (kind, condition), n in counts.items():
        out |= s(
            "kioskfleet_peripherals", n, region=region, hall=hall, kind=kind, condition=condition
        )
    return out


# --- health ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("online", "conditions", "health"),
    [
        (True, [], Health.OK),
        (True, ["ok", "ok"], Health.OK),
        (True, ["ok", "paper_low"], Health.WARNING),
        (True, ["unknown"], Health.WARNING),
        (True, ["paper_low", "fault"], Health.FAULTY),
        (True, ["jam", "unknown"], Health.FAULTY),
        (False, ["ok"], Health.OFFLINE),
        (False, ["jam"], Health.OFFLINE),
    ],
)
def test_health_is_offline_then_faulty_then_warning(
    online: bool, conditions: list[str], health: Health
) -> None:
    kinds = [
        PeripheralKind.RECEIPT_PRINTER
        if PeripheralCondition(c) in allowed_conditions(PeripheralKind.RECEIPT_PRINTER)
        else PeripheralKind.ID_CARD_READER
        for c in conditions
    ]
    pairs = [(k, PeripheralCondition(c)) for k, c in zip(kinds, conditions, strict=True)]
    assert terminal_health(online, pairs) is health
    fleet = FleetState()
    peripherals = [
        periph(f"p{i}", k.value, c) for i, (k, c) in enumerate(zip(kinds, conditions, strict=True))
    ]
    fleet.apply(report("T-1", peripherals=peripherals), at(0))
    if not online:
        fleet.apply(state("T-1", False), at(1))
    view = fleet.get("T-1")
    assert view is not None
    assert view.health is health


# --- exact series for a small fleet -----------------------------------------------------


def _small_fleet() -> FleetState:
    fleet = FleetState()
    fleet.apply(report("A", 3, hall="H1", region="North", dropped=2), at(0))  # 1, 2 dropped
    low = periph("printer", "receipt_printer", "paper_low")
    fleet.apply(report("B", hall="H1", region="North", peripherals=[low, READER_OK]), at(0))
    out = periph("printer", "receipt_printer", "paper_out")
    fault = periph("idcard", "id_card_reader", "fault", fault_code="E42")
    fleet.apply(report("C", hall="H1", region="North", peripherals=[out, fault]), at(0))
    unknown = periph("qr", "qr_scanner", "unknown")
    fleet.apply(
        report("D", hall="H2", region="North", peripherals=[unknown], software={"app": "4.0"}),
        at(0),
    )
    fleet.apply(report("E", hall="H2", region="North", peripherals=[PRINTER_OK]), at(0))
    fleet.apply(state("E", False), at(30))  # the will: offline at server time
    fleet.apply(state("F", True), at(40))  # never said its hall or region
    return fleet


def test_small_fleet_exports_exactly_the_contract_series() -> None:
    series = fleet_series(_small_fleet())
    north = {"region": "North"}
    expected: Series = {
        **terminals_series("North", "H1", ok=1, warning=1, faulty=1, off=0),
        **terminals_series("North", "H2", ok=0, warning=1, faulty=0, off=1),
        **terminals_series(UNKNOWN_LABEL, UNKNOWN_LABEL, ok=1, warning=0, faulty=0, off=0),
        **s("kioskfleet_agent_dropped_reports", 2, region="North", hall="H1"),
        **s("kioskfleet_agent_seq_gaps", 2, region="North", hall="H1"),
        **s("kioskfleet_agent_dropped_reports", 0, region="North", hall="H2"),
        **s("kioskfleet_agent_seq_gaps", 0, region="North", hall="H2"),
        **s("kioskfleet_agent_dropped_reports", 0, region=UNKNOWN_LABEL, hall=UNKNOWN_LABEL),
        **s("kioskfleet_agent_seq_gaps", 0, region=UNKNOWN_LABEL, hall=UNKNOWN_LABEL),
        **peripherals_series(
            "North",
            "H1",
            {
                ("receipt_printer", "ok"): 1,
                ("receipt_printer", "paper_low"): 1,
                ("receipt_printer", "paper_out"): 1,
                ("id_card_reader", "ok"): 2,
                ("id_card_reader", "fault"): 1,
            },
        ),
        **peripherals_series(
            "North", "H2", {("qr_scanner", "unknown"): 1, ("receipt_printer", "ok"): 1}
        ),
        **s("kioskfleet_software_terminals", 4, package="kiosk-app", version="3.1"),
        **s("kioskfleet_software_terminals", 1, package="app", version="4.0"),
        **s("kioskfleet_software_terminals", 5, package=AGENT_PACKAGE, version="1.0.0"),
        **s("kioskfleet_terminal_offline", 1, terminal="E", hall="H2", **north),
        **s(
            "kioskfleet_terminal_offline_since_timestamp_seconds",
            at(30).timestamp(),
            terminal="E",
            hall="H2",
            **north,
        ),
    }
    for terminal, hall, name, kind, condition, code in [
        ("B", "H1", "printer", "receipt_printer", "paper_low", ""),
        ("C", "H1", "printer", "receipt_printer", "paper_out", ""),
        ("C", "H1", "idcard", "id_card_reader", "fault", "E42"),
        ("D", "H2", "qr", "qr_scanner", "unknown", ""),
    ]:
        expected |= s(
            "kioskfleet_terminal_peripheral_problem",
            1,
            terminal=terminal,
            hall=hall,
            peripheral=name,
            kind=kind,
            condition=condition,
            fault_code=code,
            **north,
        )
    assert series == expected


def test_collector_describes_every_family_it_yields_even_for_an_empty_fleet() -> None:
    collector = FleetCollector(FleetState())
    assert [m.name for m in collector.describe()] == list(FLEET_METRIC_NAMES)
    assert [m.name for m in collector.collect()] == list(FLEET_METRIC_NAMES)
    assert all(not m.samples for m in collector.collect())
    text = generate_latest(_registry_with(collector)).decode()
    assert all(f"# HELP {name} " in text for name in FLEET_METRIC_NAMES)


def _registry_with(collector: FleetCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_registering_the_collector_twice_on_one_registry_is_refused() -> None:
    registry = _registry_with(FleetCollector(FleetState()))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(FleetCollector(FleetState()))


def test_build_info_is_one_with_the_package_version() -> None:
    registry = CollectorRegistry()
    ServerMetrics(registry)
    assert only(scrape(registry), "kioskfleet_build_info") == s(
        "kioskfleet_build_info", 1, version=__version__
    )


# --- no per-terminal series for healthy terminals ---------------------------------------


def _healthy_fleet(size: int) -> FleetState:
    fleet = FleetState()
    for i in range(size):
        fleet.apply(report(f"T-{i:04d}", hall=f"H{i % 3}", region="North"), at(0))
    return fleet


def test_healthy_terminals_have_no_per_terminal_series() -> None:
    series = fleet_series(_healthy_fleet(60))
    assert only(series, *PER_TERMINAL) == {}
    assert all("terminal" not in dict(labels) for _, labels in series)
    assert sum(v for (n, _), v in series.items() if n == "kioskfleet_terminals") == 60


def test_series_count_follows_halls_and_problems_not_the_number_of_terminals() -> None:
    small, large = _healthy_fleet(9), _healthy_fleet(300)
    for fleet in (small, large):  # the same two problems in both
        jam = periph("printer", "receipt_printer", "jam")
        fleet.apply(report("T-0001", seq=1, hall="H1", region="North", peripherals=[jam]), at(1))
        fleet.apply(state("T-0002", False), at(2))
    small_series, large_series = fleet_series(small), fleet_series(large)
    assert small_series.keys() == large_series.keys()
    assert len(only(large_series, *PER_TERMINAL)) == 3  # jam + offline + offline since


# --- a mass outage: hall series instead of terminal series -----------------------------

# (hall, terminals, offline): Down wholly unreachable, Many more offline than the budget
# (10) although under half, Duo 2 of 2, Few 3 of 20 and Solo 1 of 1 are isolated failures.
_OUTAGE = (("Down", 500, 500), ("Many", 40, 12), ("Duo", 2, 2), ("Few", 20, 3), ("Solo", 1, 1))


def _mass_outage() -> FleetState:
    fleet = FleetState()
    for hall, size, offline in _OUTAGE:
        for i in range(size):
            tid = f"{hall}-{i:03d}"
            fleet.apply(report(tid, hall=hall, region="North"), at(0))
            if i < offline:
                fleet.apply(state(tid, False), at(10))  # the broker publishes the will
    return fleet


def test_a_mass_outage_exports_which_halls_are_unreachable_and_how_many_terminals() -> None:
    series = fleet_series(_mass_outage())
    unreachable = {
        dict(labels)["hall"]: v
        for (n, labels), v in series.items()
        if n == "kioskfleet_hall_unreachable"
    }
    assert unreachable == {"Down": 1, "Many": 1, "Duo": 1, "Few": 0, "Solo": 0}
    offline = {
        dict(labels)["hall"]: v
        for (n, labels), v in series.items()
        if n == "kioskfleet_terminals" and dict(labels)["status"] == "offline"
    }
    assert offline == {hall: n for hall, _, n in _OUTAGE}
    per_terminal = {
        dict(labels)["terminal"] for (n, labels) in series if n == "kioskfleet_terminal_offline"
    }
    assert per_terminal == {"Few-000", "Few-001", "Few-002", "Solo-000"}
    assert len(only(series, *PER_TERMINAL)) == 2 * 4  # not 2 * 518


def test_an_unreachable_hall_in_maintenance_is_not_exported_as_unreachable() -> None:
    fleet = _mass_outage()
    summary = fleet.summary(offline_per_hall=LabelBudget().offline_terminals_per_hall)
    families = fleet_families(summary, maintenance=ActiveMaintenance(halls=frozenset({"Down"})))
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    unreachable = {
        dict(labels)["hall"]: v
        for (n, labels), v in scrape(registry).items()
        if n == "kioskfleet_hall_unreachable"
    }
    assert unreachable == {"Down": 0, "Many": 1, "Duo": 1, "Few": 0, "Solo": 0}


def test_a_mass_outage_reading_copies_no_entry_of_a_hall_beyond_the_budget() -> None:
    fleet = _mass_outage()
    summary = fleet.summary(offline_per_hall=LabelBudget().offline_terminals_per_hall)
    copied = {t.hall for t in summary.problem_terminals}
    assert copied == {"Duo", "Few", "Solo"}  # Duo is cut by its share, after the copy
    assert len(summary.problem_terminals) == 2 + 3 + 1
    assert [t.id for t in summary.problem_terminals] == sorted(
        t.id for t in summary.problem_terminals
    )
    assert len(fleet.summary().problem_terminals) == 518  # no budget: every offline one


def test_a_hall_back_within_the_budget_is_reachable_and_exports_its_offline_terminals_again() -> (
    None
):
    fleet = _mass_outage()
    for i in range(3, 12):  # Many: 12 offline -> 3 offline of 40
        message = report(f"Many-{i:03d}", seq=1, hall="Many", region="North", sent_at=at(20))
        fleet.apply(message, at(20))
    series = fleet_series(fleet)
    many = frozenset({("region", "North"), ("hall", "Many")})
    assert series[("kioskfleet_hall_unreachable", many)] == 0
    still_offline = {
        dict(labels)["terminal"]
        for (n, labels) in series
        if n == "kioskfleet_terminal_offline" and dict(labels)["hall"] == "Many"
    }
    assert still_offline == {"Many-000", "Many-001", "Many-002"}


def _printer_outage() -> FleetState:
    """Hall Paper: 30 printers out of paper at once (a bad paper batch), one card reader
    fault and one offline terminal whose printer was out; hall Calm: two problems."""
    fleet = FleetState()
    out = periph("printer", "receipt_printer", "paper_out")
    for i in range(30):
        fleet.apply(report(f"Paper-{i:03d}", hall="Paper", region="North", peripherals=[out, READER_OK]), at(0))  # fmt: skip
    fault = periph("idcard", "id_card_reader", "fault", fault_code="E42")
    fleet.apply(report("Paper-R", hall="Paper", region="North", peripherals=[PRINTER_OK, fault]), at(0))  # fmt: skip
    fleet.apply(report("Paper-X", hall="Paper", region="North", peripherals=[out]), at(0))
    fleet.apply(state("Paper-X", False), at(10))  # offline: its problems are not current
    for tid in ("Calm-1", "Calm-2"):
        fleet.apply(report(tid, hall="Calm", region="North", peripherals=[out]), at(0))
    return fleet


def _withheld(series: Series) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["hall"], dict(labels)["family"]): v
        for (n, labels), v in series.items()
        if n == "kioskfleet_hall_peripheral_problems_withheld"
    }


def test_a_mass_peripheral_outage_withholds_the_halls_problem_series_and_says_how_many() -> None:
    series = fleet_series(_printer_outage())  # default budget: 20 terminals per hall
    assert _withheld(series) == {("Paper", "printer"): 30, ("Paper", "identity_reader"): 1}
    problems = {
        dict(labels)["terminal"]
        for (n, labels) in series
        if n == "kioskfleet_terminal_peripheral_problem"
    }
    assert problems == {"Calm-1", "Calm-2"}  # not 2 + 31
    paper = {("region", "North"), ("hall", "Paper"), ("family", "printer")}
    out = frozenset(paper | {("kind", "receipt_printer"), ("condition", "paper_out")})
    assert series[("kioskfleet_peripherals", out)] == 31  # the counts still say them all
    faulty = frozenset({("region", "North"), ("hall", "Paper"), ("status", "faulty")})
    assert series[("kioskfleet_terminals", faulty)] == 31
    assert ("kioskfleet_terminal_offline", frozenset({("terminal", "Paper-X"), ("hall", "Paper"), ("region", "North")})) in series  # fmt: skip


def test_a_mass_peripheral_outage_reading_copies_no_entry_of_the_hall() -> None:
    fleet = _printer_outage()
    summary = fleet.summary(faulted_per_hall=20)
    assert {t.id for t in summary.problem_terminals} == {"Calm-1", "Calm-2", "Paper-X"}
    assert len(fleet.summary().problem_terminals) == 34  # no budget: every problem terminal


def test_a_hall_at_its_peripheral_budget_exports_every_problem_series_and_nothing_withheld() -> (
    None
):
    budget = LabelBudget(peripheral_problem_terminals_per_hall=31)  # Paper has 31: not above
    series = fleet_families_series(_printer_outage(), budget)
    assert _withheld(series) == {}
    problems = only(series, "kioskfleet_terminal_peripheral_problem")
    assert len(problems) == 30 + 1 + 2
    tight = fleet_families_series(_printer_outage(), LabelBudget(peripheral_problem_terminals_per_hall=1))  # fmt: skip
    assert _withheld(tight) == {
        ("Paper", "printer"): 30,
        ("Paper", "identity_reader"): 1,
        ("Calm", "printer"): 2,
    }
    assert not only(tight, "kioskfleet_terminal_peripheral_problem")


def test_a_withholding_hall_in_maintenance_exports_nothing_withheld() -> None:
    summary = _printer_outage().summary(faulted_per_hall=20)
    families = fleet_families(summary, maintenance=ActiveMaintenance(halls=frozenset({"Paper"})))
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    series = scrape(registry)
    assert _withheld(series) == {}
    assert {
        dict(labels)["terminal"]
        for (n, labels) in series
        if n == "kioskfleet_terminal_peripheral_problem"
    } == {"Calm-1", "Calm-2"}


def test_every_scrape_reports_how_long_it_held_the_fleet_lock() -> None:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    fleet = _mass_outage()
    registry.register(FleetCollector(fleet, on_lock_held=metrics.fleet_lock_held.observe))
    generate_latest(registry)
    generate_latest(registry)
    series = scrape(registry)  # the histogram is collected first: it shows the earlier two
    assert series[("kioskfleet_fleet_lock_held_seconds_count", frozenset())] == 2
    assert series[("kioskfleet_fleet_lock_held_seconds_sum", frozenset())] > 0


# --- tallies through a sequence of changes ----------------------------------------------


def _problem(terminal: str, condition: str, code: str = "") -> Series:
    return s(
        "kioskfleet_terminal_peripheral_problem",
        1,
        terminal=terminal,
        hall="H1",
        region="North",
        peripheral="printer",
        kind="receipt_printer",
        condition=condition,
        fault_code=code,
    )


def _printer_count(series: Series, condition: str, hall: str = "H1") -> float | None:
    """None when the series does not exist (no printer of the hall is in ``condition``)."""
    labels = {
        "region": "North",
        "hall": hall,
        "family": "printer",
        "kind": "receipt_printer",
        "condition": condition,
    }
    return series.get(("kioskfleet_peripherals", frozenset(labels.items())))


def _status(series: Series, status: str, hall: str = "H1") -> float:
    labels = {"region": "North", "hall": hall, "status": status}
    return series[("kioskfleet_terminals", frozenset(labels.items()))]


def test_fault_raised_then_cleared_adds_then_removes_its_series_and_moves_the_counts() -> None:
    fleet = FleetState()
    fleet.apply(report("A", 1, hall="H1"), at(0))
    fleet.apply(report("B", 1, hall="H1"), at(0))

    jam = periph("printer", "receipt_printer", "jam")
    fleet.apply(peripheral_event("A", 2, jam, "ok", sent_at=at(5)), at(5))
    series = fleet_series(fleet)
    assert only(series, *PER_TERMINAL) == _problem("A", "jam")
    assert (_status(series, "faulty"), _status(series, "ok")) == (1, 1)
    assert (_printer_count(series, "jam"), _printer_count(series, "ok")) == (1, 1)

    low = periph("printer", "receipt_printer", "paper_low")
    fleet.apply(peripheral_event("A", 3, low, "jam", sent_at=at(6)), at(6))
    series = fleet_series(fleet)
    assert only(series, *PER_TERMINAL) == _problem("A", "paper_low")
    assert (_status(series, "warning"), _status(series, "faulty")) == (1, 0)

    fleet.apply(peripheral_event("A", 4, PRINTER_OK, "paper_low", sent_at=at(7)), at(7))
    series = fleet_series(fleet)
    assert only(series, *PER_TERMINAL) == {}
    assert (_status(series, "ok"), _status(series, "warning")) == (2, 0)
    assert (_printer_count(series, "jam"), _printer_count(series, "ok")) == (None, 2)


def test_offline_terminal_has_offline_series_until_it_comes_back() -> None:
    fleet = FleetState(offline_after_missed_reports=1)
    fleet.apply(report("A", 1, hall="H1", interval=10), at(0))
    fleet.apply(report("B", 1, hall="H1", interval=10), at(0))
    fleet.expire_silent(at(11))  # both silent past one interval: timeout
    fleet.apply(report("B", 2, hall="H1", sent_at=at(12)), at(12))
    series = fleet_series(fleet)
    where = {"terminal": "A", "hall": "H1", "region": "North"}
    assert only(series, *PER_TERMINAL) == {
        **s("kioskfleet_terminal_offline", 1, **where),
        **s("kioskfleet_terminal_offline_since_timestamp_seconds", at(11).timestamp(), **where),
    }
    assert (_status(series, "offline"), _status(series, "ok")) == (1, 1)

    fleet.apply(report("A", 2, hall="H1", sent_at=at(13)), at(13))
    series = fleet_series(fleet)
    assert only(series, *PER_TERMINAL) == {}
    assert (_status(series, "offline"), _status(series, "ok")) == (0, 2)


def test_an_offline_terminal_exports_its_offline_series_and_not_its_last_peripheral_problems() -> (
    None
):
    fleet = FleetState()
    out = periph("printer", "receipt_printer", "paper_out")
    fleet.apply(report("A", 1, hall="H1", peripherals=[out]), at(0))
    assert only(fleet_series(fleet), *PER_TERMINAL) == _problem("A", "paper_out")
    fleet.apply(state("A", False), at(1))
    where = {"terminal": "A", "hall": "H1", "region": "North"}
    assert only(fleet_series(fleet), *PER_TERMINAL) == {
        **s("kioskfleet_terminal_offline", 1, **where),
        **s("kioskfleet_terminal_offline_since_timestamp_seconds", at(1).timestamp(), **where),
    }
    fleet.apply(report("A", 2, hall="H1", peripherals=[out], sent_at=at(2)), at(2))
    assert only(fleet_series(fleet), *PER_TERMINAL) == _problem("A", "paper_out")


def test_terminal_moving_hall_moves_every_count_and_empties_the_old_hall() -> None:
    fleet = FleetState()
    jam = periph("printer", "receipt_printer", "jam")
    fleet.apply(report("A", 1, hall="H1", peripherals=[jam]), at(0))
    fleet.apply(report("A", 2, hall="H2", peripherals=[jam]), at(1))
    series = fleet_series(fleet)
    assert {dict(labels)["hall"] for _, labels in series if "hall" in dict(labels)} == {"H2"}
    assert _status(series, "faulty", hall="H2") == 1
    assert _printer_count(series, "jam", hall="H2") == 1


def test_software_upgrade_moves_the_terminal_to_the_new_version() -> None:
    fleet = FleetState()
    fleet.apply(report("A", 1, software={"app": "1.0"}), at(0))
    fleet.apply(report("B", 1, software={"app": "1.0"}), at(0))
    fleet.apply(report("A", 2, software={"app": "2.0"}), at(1))
    fleet.apply(boot_event("B", 0, boot="boot-bbbb", version="1.1.0"), at(2))
    software = only(fleet_series(fleet), "kioskfleet_software_terminals")
    assert software == {
        **s("kioskfleet_software_terminals", 1, package="app", version="1.0"),
        **s("kioskfleet_software_terminals", 1, package="app", version="2.0"),
        **s("kioskfleet_software_terminals", 1, package=AGENT_PACKAGE, version="1.0.0"),
        **s("kioskfleet_software_terminals", 1, package=AGENT_PACKAGE, version="1.1.0"),
    }


def test_a_hall_really_named_unknown_adds_up_with_terminals_that_named_none() -> None:
    fleet = FleetState()
    fleet.apply(report("A", hall="unknown", region="unknown"), at(0))
    fleet.apply(state("B", True), at(0))  # no hall, no region
    terminals = only(
        fleet_series(fleet),
        "kioskfleet_terminals",
        "kioskfleet_hall_open",
        "kioskfleet_hall_opens_in_seconds",
        "kioskfleet_hall_maintenance",
        "kioskfleet_hall_unreachable",
    )  # scrape() refuses duplicates
    assert terminals == terminals_series("unknown", "unknown", ok=2, warning=0, faulty=0, off=0)


# --- model-based: the collector over incremental tallies equals a recount ----------------

_HALLS = [("North", "H1"), ("North", "H2"), ("South", "H1")]
_PERIPHERALS = st.lists(
    st.tuples(
        st.sampled_from(["printer", "a4", "idcard", "qr"]),
        st.sampled_from(["ok", "ok", "paper_low", "paper_out", "jam", "unknown"]),
        st.sampled_from(["ok", "ok", "fault", "disconnected", "unknown"]),
        st.sampled_from([None, "E1", "E2"]),
    ),
    max_size=3,
    unique_by=lambda p: p[0],
)
_KINDS = {"printer": "receipt_printer", "a4": "a4_printer", "idcard": "id_card_reader"}


def _peripheral(
    name: str, printer_condition: str, reader_condition: str, code: str | None
) -> dict[str, str]:
    kind = _KINDS.get(name, "qr_scanner")
    condition = printer_condition if "printer" in kind else reader_condition
    extra = {"fault_code": code} if code and condition != "ok" else {}
    return periph(name, kind, condition, **extra)


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["report", "event", "will", "online", "shutdown", "boot", "sweep", "load"]),
        st.sampled_from(["A", "B", "C", "D"]),
        st.sampled_from(_HALLS),
        _PERIPHERALS,
        st.sampled_from(["1.0", "2.0"]),
    ),
    max_size=40,
)


def recount(
    views: Iterable[TerminalView],
    closed_halls: frozenset[str] = frozenset(),
    budget: LabelBudget | None = None,
) -> Series:
    """The fleet series computed from scratch from every terminal (what the tallies must
    equal), with the halls named in ``closed_halls`` closed (opening in 600 s); a hall
    with at least 2 offline and more than the budget's or at least half offline is
    unreachable and has no per-terminal offline series; a hall with more online terminals
    with a peripheral problem than the budget's has no per-terminal problem series but
    their count per family."""
    budget = budget or LabelBudget()
    offline_series: dict[tuple[str, str], Series] = {}
    problem_series: dict[tuple[str, str], Series] = {}
    problem_terminals: Counter[tuple[str, str]] = Counter()
    problems_by_family: dict[tuple[str, str], Counter[str]] = {}
    status: Counter[tuple[str, str, str]] = Counter()
    halls: set[tuple[str, str]] = set()
    peripherals: Counter[tuple[str, str, str, str]] = Counter()
    software: Counter[tuple[str, str]] = Counter()
    dropped: Counter[tuple[str, str]] = Counter()
    gaps: Counter[tuple[str, str]] = Counter()
    out: Series = {}
    for v in views:
        region, hall = v.region or UNKNOWN_LABEL, v.hall or UNKNOWN_LABEL
        halls.add((region, hall))
        dropped[(region, hall)] += v.dropped_reports
        gaps[(region, hall)] += v.seq_gaps
        is_open = v.hall not in closed_halls
        health = closed_or(
            v.health,
            clean_shutdown=v.offline_reason is OfflineReason.SHUTDOWN,
            hall_open=is_open,
        )
        status[(region, hall, health.value)] += 1
        for p in v.peripherals:
            peripherals[(region, hall, p.kind.value, p.condition.value)] += 1
        installed = dict(v.software)
        if v.agent_version is not None:
            installed.setdefault(AGENT_PACKAGE, v.agent_version)
        software.update(installed.items())
        where = {"terminal": v.id, "hall": hall, "region": region}
        if health is Health.CLOSED:
            continue
        if not v.online:
            mine = offline_series.setdefault((region, hall), {})
            mine |= s("kioskfleet_terminal_offline", 1, **where)
            mine |= s(
                "kioskfleet_terminal_offline_since_timestamp_seconds",
                v.state_since.timestamp(),
                **where,
            )
            continue
        mine = problem_series.setdefault((region, hall), {})
        problem_terminals[(region, hall)] += v.has_problem
        for p in v.peripherals:
            if p.condition is not PeripheralCondition.OK:
                family = family_of(p.kind).family.value
                problems_by_family.setdefault((region, hall), Counter())[family] += 1
                mine |= s(
                    "kioskfleet_terminal_peripheral_problem",
                    1,
                    peripheral=p.name,
                    kind=p.kind.value,
                    condition=p.condition.value,
                    fault_code=p.fault_code or "",
                    **where,
                )
    for region, hall in halls:
        out |= s(
            "kioskfleet_agent_dropped_reports", dropped[(region, hall)], region=region, hall=hall
        )
        out |= s("kioskfleet_agent_seq_gaps", gaps[(region, hall)], region=region, hall=hall)
        is_open = hall not in closed_halls
        out |= hall_series(region, hall, is_open=is_open, opens_in=0 if is_open else 600.0)
        out |= s("kioskfleet_hall_maintenance", 0, region=region, hall=hall)
        offline = status[(region, hall, Health.OFFLINE.value)]
        total = sum(status[(region, hall, h.value)] for h in Health)
        cut = offline >= 2 and (offline > budget.offline_terminals_per_hall or 2 * offline >= total)
        out |= s("kioskfleet_hall_unreachable", 1 if cut else 0, region=region, hall=hall)
        if not cut:
            out |= offline_series.get((region, hall), {})
        if problem_terminals[(region, hall)] > budget.peripheral_problem_terminals_per_hall:
            for family, n in problems_by_family[(region, hall)].items():
                out |= {
                    (
                        "kioskfleet_hall_peripheral_problems_withheld",
                        frozenset({"region": region, "hall": hall, "family": family}.items()),
                    ): n
                }
        else:
            out |= problem_series.get((region, hall), {})
        for health in Health:
            out |= s(
                "kioskfleet_terminals",
                status[(region, hall, health.value)],
                region=region,
                hall=hall,
                status=health.value,
            )
    for (region, hall, kind, condition), n in peripherals.items():
        out |= s(
            "kioskfleet_peripherals", n, region=region, hall=hall, kind=kind, condition=condition
        )
    for (package, version), n in software.items():
        out |= s("kioskfleet_software_terminals", n, package=package, version=version)
    return out


@settings(max_examples=150, deadline=None)
@given(_STEPS, st.frozensets(st.sampled_from(["H1", "H2"])), st.sampled_from([1, 20]))
def test_collector_series_always_equal_a_recount_from_scratch(
    steps: list[tuple[str, str, tuple[str, str], list[tuple[str, str, str, str | None]], str]],
    closed_halls: frozenset[str],
    problems_per_hall: int,
) -> None:
    fleet = FleetState(offline_after_missed_reports=1)
    seq: Counter[str] = Counter()
    boots: dict[str, str] = {}
    for i, (what, tid, (region, hall), raw_peripherals, version) in enumerate(steps):
        now = at(i * 20)
        seq[tid] += 1
        boot = boots.get(tid, BOOT)
        ps = [_peripheral(*p) for p in raw_peripherals]
        if what == "report":
            message = report(
                tid,
                seq[tid],
                boot=boot,
                sent_at=now,
                hall=hall,
                region=region,
                peripherals=ps,
                software={"app": version},
                dropped=i % 3,
            )
            fleet.apply(message, now)
        elif what == "event" and ps:
            fleet.apply(peripheral_event(tid, seq[tid], ps[0], None, sent_at=now), now)
        elif what in ("will", "online", "shutdown"):
            reason = "shutdown" if what == "shutdown" else None
            message = state(
                tid, what == "online", reason=reason, seq=seq[tid], boot=boot, sent_at=now
            )
            fleet.apply(message, now)
        elif what == "boot":
            boots[tid] = f"boot-{i:06d}"
            seq[tid] = 0
            fleet.apply(boot_event(tid, 0, boot=boots[tid], version=f"1.{i}.0"), now)
        elif what == "sweep":
            fleet.expire_silent(now)
        elif what == "load":  # a restart: the tallies are rebuilt from the stored terminals
            views = fleet.query(TerminalFilter(), limit=1000).items
            fleet = FleetState(offline_after_missed_reports=1)
            fleet.load(views)
    everyone = fleet.query(TerminalFilter(), limit=1000).items
    registry = CollectorRegistry()
    budget = LabelBudget(peripheral_problem_terminals_per_hall=problems_per_hall)
    openings = _openings(dict.fromkeys(closed_halls, 600.0))
    registry.register(FleetCollector(fleet, budget, openings=openings))
    assert scrape(registry) == recount(everyone, closed_halls, budget)
    summary = fleet.summary()
    assert [v.id for v in summary.problem_terminals] == [v.id for v in everyone if v.has_problem]
    for h in summary.halls:
        assert h.ok + h.warning + h.faulty + h.offline == h.total
        assert h.warning + h.faulty == h.degraded


def test_summary_reads_the_same_tallies_as_halls_software_and_problem_terminals() -> None:
    fleet = _small_fleet()
    summary = fleet.summary()
    assert list(summary.halls) == fleet.halls()
    assert list(summary.software) == fleet.software()
    views = fleet.problem_terminals()
    assert [
        (t.id, t.hall, t.region, t.online, t.state_since, t.problems)
        for t in summary.problem_terminals
    ] == [
        (
            v.id,
            v.hall,
            v.region,
            v.online,
            v.state_since,
            tuple(p for p in v.peripherals if p.is_problem),
        )
        for v in views
    ]
    assert [t.id for t in summary.problem_terminals] == ["B", "C", "D", "E"]


# --- device text is bounded before it reaches a label -----------------------------------


def _label_values(series: Series, name: str, label: str) -> Counter[str]:
    return Counter(dict(labels)[label] for (n, labels) in series if n == name)


def test_fault_codes_beyond_the_budget_are_folded_into_other_per_kind() -> None:
    fleet = FleetState()
    for i in range(30):  # 30 readers, each with its own code; E-COMMON on 5 more
        fault = periph("idcard", "id_card_reader", "fault", fault_code=f"E-{i:03d}")
        fleet.apply(report(f"R-{i:02d}", peripherals=[PRINTER_OK, fault]), at(0))
    for i in range(5):
        fault = periph("idcard", "id_card_reader", "fault", fault_code="E-COMMON")
        fleet.apply(report(f"C-{i}", peripherals=[PRINTER_OK, fault]), at(0))
    jam = periph("printer", "receipt_printer", "jam", fault_code="P-1")
    fleet.apply(report("P", peripherals=[jam, READER_OK]), at(0))
    registry = CollectorRegistry()
    budget = LabelBudget(fault_codes_per_kind=3, peripheral_problem_terminals_per_hall=100)
    registry.register(FleetCollector(fleet, budget))
    codes = _label_values(scrape(registry), "kioskfleet_terminal_peripheral_problem", "fault_code")
    # The most reported code keeps its value, then the smallest; each kind has its own budget.
    assert codes == Counter({"E-COMMON": 5, "E-000": 1, "E-001": 1, "other": 28, "P-1": 1})


def test_software_beyond_the_budget_is_folded_into_other_and_the_agent_keeps_its_name() -> None:
    fleet = FleetState()
    for i in range(12):
        installed = {"kiosk-app": f"3.{i}", f"tool-{i}": "1.0"}
        fleet.apply(report(f"T-{i:02d}", software=installed), at(0))
    fleet.apply(report("T-99", software={"kiosk-app": "3.0"}), at(0))
    # Two packages keep their name: the agent (always) and kiosk-app (on most terminals).
    series = fleet_families_series(fleet, LabelBudget(versions_per_package=2, packages=2))
    software = {
        (dict(labels)["package"], dict(labels)["version"]): value
        for (name, labels), value in series.items()
        if name == "kioskfleet_software_terminals"
    }
    assert software == {
        (AGENT_PACKAGE, "1.0.0"): 13,
        ("kiosk-app", "3.0"): 2,
        ("kiosk-app", "3.1"): 1,
        ("kiosk-app", "other"): 10,
        ("other", "other"): 12,  # the twelve tools: packages on fewer terminals
    }
    assert sum(v for (p, _), v in software.items() if p != AGENT_PACKAGE) == 13 + 12


def fleet_families_series(fleet: FleetState, budget: LabelBudget) -> Series:
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet, budget))
    return scrape(registry)


# --- opening hours: the hall gauges and "closed" ------------------------------------------


def _openings(closed: dict[str, float | None]) -> HallOpenings:
    """Halls in ``closed`` are closed (opening in so many seconds); the rest are open."""

    def openings(hall: str | None) -> tuple[bool, float | None]:
        if hall in closed:
            return False, closed[hall]
        return True, 0.0

    return openings


def _night_fleet() -> FleetState:
    """In each of halls Open and Shut: S shut down cleanly, L lost (the will), P online with
    paper out, K and Q online and well (so that 2 offline are not half the hall)."""
    fleet = FleetState()
    out = periph("printer", "receipt_printer", "paper_out")
    for hall in ("Open", "Shut"):
        for tid in ("S", "L", "P", "K", "Q"):
            peripherals = [out] if tid == "P" else [PRINTER_OK]
            fleet.apply(report(f"{tid}-{hall}", hall=hall, peripherals=peripherals), at(0))
        fleet.apply(state(f"S-{hall}", False, reason="shutdown", seq=2, sent_at=at(5)), at(5))
        fleet.apply(state(f"L-{hall}", False), at(6))
    return fleet


def test_a_clean_shutdown_while_the_hall_is_closed_is_closed_and_exports_no_terminal_series() -> (
    None
):
    registry = CollectorRegistry()
    registry.register(FleetCollector(_night_fleet(), openings=_openings({"Shut": 1800.0})))
    series = scrape(registry)
    assert only(series, "kioskfleet_terminals") == only(
        terminals_series("North", "Open", ok=2, warning=0, faulty=1, off=2)
        | terminals_series("North", "Shut", ok=2, warning=0, faulty=1, off=1, closed=1),
        "kioskfleet_terminals",
    )
    assert only(series, "kioskfleet_hall_open", "kioskfleet_hall_opens_in_seconds") == (
        hall_series("North", "Open", is_open=True, opens_in=0)
        | hall_series("North", "Shut", is_open=False, opens_in=1800.0)
    )
    offline = {dict(labels)["terminal"] for (name, labels) in series if name == PER_TERMINAL[0]}
    assert offline == {"S-Open", "L-Open", "L-Shut"}  # lost at night is still offline
    problems = {dict(labels)["terminal"] for (name, labels) in series if name == PER_TERMINAL[2]}
    assert problems == {"P-Open", "P-Shut"}  # the rules decide what fires at night


def test_a_hall_that_opens_nowhere_in_sight_has_no_opens_in_series() -> None:
    registry = CollectorRegistry()
    registry.register(FleetCollector(_night_fleet(), openings=_openings({"Shut": None})))
    series = scrape(registry)
    assert only(series, "kioskfleet_hall_open", "kioskfleet_hall_opens_in_seconds") == (
        hall_series("North", "Open", is_open=True, opens_in=0)
        | hall_series("North", "Shut", is_open=False, opens_in=None)
    )


def test_the_collector_asks_the_openings_once_per_hall_per_scrape() -> None:
    asked: Counter[str | None] = Counter()

    def openings(hall: str | None) -> tuple[bool, float | None]:
        asked[hall] += 1
        return hall != "Shut", 0.0 if hall != "Shut" else 60.0

    registry = CollectorRegistry()
    registry.register(FleetCollector(_night_fleet(), openings=openings))
    scrape(registry)
    assert asked == Counter({"Open": 1, "Shut": 1})


# ------------------------------------------------------------------ maintenance


def _problem_series(series: Series) -> set[str]:
    """The terminals that export a problem series (offline or a peripheral problem)."""
    names = {"kioskfleet_terminal_offline", "kioskfleet_terminal_peripheral_problem"}
    return {dict(labels)["terminal"] for name, labels in series if name in names}


def test_a_terminal_in_maintenance_exports_its_window_and_no_problem_series() -> None:
    fleet = _small_fleet()
    registry = CollectorRegistry()
    registry.register(
        FleetCollector(fleet, maintenance=lambda: ActiveMaintenance(terminals=frozenset({"C"})))
    )
    series = scrape(registry)

    assert _problem_series(series) == {"B", "D", "E"}  # C (paper out, reader fault) is quiet
    assert (
        series[
            (
                "kioskfleet_terminal_maintenance",
                frozenset({"terminal": "C", "hall": "H1", "region": "North"}.items()),
            )
        ]
        == 1
    )
    assert [k for k in series if k[0] == "kioskfleet_terminal_maintenance"] == [
        (
            "kioskfleet_terminal_maintenance",
            frozenset({"terminal": "C", "hall": "H1", "region": "North"}.items()),
        )
    ]
    # the hall's counts stay the truth: C is still faulty
    assert (
        series[
            (
                "kioskfleet_terminals",
                frozenset({"region": "North", "hall": "H1", "status": "faulty"}.items()),
            )
        ]
        == 1
    )


def test_a_hall_in_maintenance_silences_every_terminal_of_it_and_says_so() -> None:
    fleet = _small_fleet()
    families = fleet_families(
        fleet.summary(), maintenance=ActiveMaintenance(halls=frozenset({"H2"}))
    )
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    series = scrape(registry)

    assert _problem_series(series) == {"B", "C"}  # D (scanner unknown), E (offline) are in H2
    assert (
        series[
            ("kioskfleet_hall_maintenance", frozenset({"region": "North", "hall": "H2"}.items()))
        ]
        == 1
    )
    assert (
        series[
            ("kioskfleet_hall_maintenance", frozenset({"region": "North", "hall": "H1"}.items()))
        ]
        == 0
    )


def test_a_window_that_ended_exports_the_problems_again() -> None:
    fleet = _small_fleet()
    window = MaintenanceWindow(
        scope=Scope.TERMINAL,
        target="C",
        reason="printer replaced",
        until=at(100),
        started_at=at(0),
        started_by="token:ops",
    )
    during = fleet_families(fleet.summary(), maintenance=active_maintenance([window], at(99)))
    after = fleet_families(fleet.summary(), maintenance=active_maintenance([window], at(100)))

    def terminals_with_problems(families: list[Metric]) -> set[str]:
        return {
            sample.labels["terminal"]
            for family in families
            if family.name == "kioskfleet_terminal_peripheral_problem"
            for sample in family.samples
        }

    assert "C" not in terminals_with_problems(during)
    assert "C" in terminals_with_problems(after)


class _Fixed:
    """A collector yielding ``families`` (to scrape what ``fleet_families`` returned)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
