"""The paper tracker and its gauges: fed by fleet transitions and pages, one printer per
terminal, forecasts recomputed on refresh, idle histories dropped, ETA series only for
printers running out within a day, and the hall's closing for the alerts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from protocol.codec import encode
from protocol.messages import Message
from server.fleet_state import FleetState
from server.hall_openings import HallOpenings
from server.inbound import InboundMessage
from server.ingest import Ingest, IngestResult
from server.log_throttle import ThrottledLog
from server.maintenance import NO_MAINTENANCE
from server.metrics import ServerMetrics
from server.opening_hours import OpeningHours
from server.paper_metrics import PaperCollector
from server.paper_tracker import PaperTracker
from tests.support.fleet_messages import READER_OK, T0, at, periph, report, usage
from tests.unit.test_ingest import FakeClock, RecordingSink

BERLIN = ZoneInfo("Europe/Berlin")
DAY_HOURS = OpeningHours.model_validate(
    {
        "timezone": "Europe/Berlin",
        "weekly": {d: [{"start": "08:00", "end": "18:00"}] for d in ("mon", "tue", "fri")},
    }
)


def _tracker(retention_days: float = 14) -> PaperTracker:
    return PaperTracker(
        roll_pages=lambda _tid: 600, low_share=0.1, retention=timedelta(days=retention_days)
    )


def _feed(fleet: FleetState, tracker: PaperTracker, message_seq: int, condition: str) -> None:
    printers = [periph("receipt0", "receipt_printer", condition), READER_OK]
    outcome = fleet.apply(report("T-1", message_seq, peripherals=printers), at(message_seq))
    for t in outcome.transitions:
        tracker.note_transition(t)


def _paper_low_at_ten_pages_an_hour() -> tuple[FleetState, PaperTracker]:
    fleet, tracker = FleetState(), _tracker()
    _feed(fleet, tracker, 1, "ok")
    for h in range(10):
        tracker.note_usage("T-1", T0 + timedelta(hours=h - 10), 10)
    _feed(fleet, tracker, 2, "paper_low")
    return fleet, tracker


def test_a_printer_going_paper_low_gets_the_reserve_over_its_rate() -> None:
    _fleet, tracker = _paper_low_at_ten_pages_an_hour()
    assert tracker.forecast("T-1") is None  # nothing before the first refresh
    assert tracker.refresh(T0 + timedelta(seconds=2)) == 1
    got = tracker.forecast("T-1")
    assert got is not None
    assert (got.basis, got.remaining_pages, got.profile) == ("reserve", 60, "flat")
    assert got.pages_per_hour == pytest.approx(10, rel=0.01)
    assert got.eta_s == pytest.approx(6 * 3600, rel=0.01)
    assert tracker.printer("T-1") == "receipt0"


def test_only_the_first_printer_seen_changing_and_no_other_family_counts() -> None:
    fleet, tracker = FleetState(), _tracker()
    two = [periph("a", "receipt_printer", "ok"), periph("b", "a4_printer", "paper_low"), READER_OK]
    for t in fleet.apply(report("T-1", 1, peripherals=two), at(1)).transitions:
        tracker.note_transition(t)
    assert tracker.printer("T-1") == "b"
    out = [periph("a", "receipt_printer", "paper_out"), periph("b", "a4_printer", "paper_low")]
    reader = periph("idcard", "id_card_reader", "fault")
    for t in fleet.apply(report("T-1", 2, peripherals=[*out, reader]), at(2)).transitions:
        tracker.note_transition(t)
    tracker.note_usage("T-1", T0 - timedelta(hours=3), 30)
    tracker.refresh(at(3))
    got = tracker.forecast("T-1")
    assert got is not None
    assert (got.basis, got.remaining_pages) == ("reserve", 60)  # b's, not a's paper_out


def test_idle_histories_are_dropped_after_the_retention_and_forget_drops_at_once() -> None:
    _fleet, tracker = _paper_low_at_ten_pages_an_hour()
    assert len(tracker) == 1
    tracker.refresh(T0 + timedelta(days=13))
    assert len(tracker) == 1
    tracker.refresh(T0 + timedelta(days=15))
    assert len(tracker) == 0
    assert tracker.forecast("T-1") is None
    _fleet, tracker = _paper_low_at_ten_pages_an_hour()
    tracker.refresh(at(5))
    tracker.forget("T-1")
    assert (len(tracker), tracker.forecast("T-1"), tracker.printer("T-1")) == (0, None, None)


class _Hours:
    def __init__(self, hours: Mapping[str, OpeningHours]) -> None:
        self.hours = dict(hours)

    def all(self) -> tuple[Mapping[str, OpeningHours], list[str]]:
        return dict(self.hours), []


def test_closes_at_is_the_end_of_the_current_or_the_next_opening() -> None:
    now = datetime(2026, 12, 4, 12, tzinfo=BERLIN)  # a Friday, open
    openings = HallOpenings(_Hours({"H1": DAY_HOURS}).all, refresh_s=60, clock=lambda: now)
    assert openings.closes_at("H1", now) == datetime(2026, 12, 4, 18, tzinfo=BERLIN)
    night = datetime(2026, 12, 4, 22, tzinfo=BERLIN)
    assert openings.closes_at("H1", night) == datetime(2026, 12, 7, 18, tzinfo=BERLIN)  # Monday
    assert openings.closes_at("no-hours", now) is None
    assert openings.closes_at(None, now) is None


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_the_gauges_show_printers_running_out_within_a_day_and_their_hall_closing() -> None:
    fleet, tracker = _paper_low_at_ten_pages_an_hour()
    now = T0 + timedelta(seconds=2)
    tracker.refresh(now)
    registry = CollectorRegistry()
    openings = HallOpenings(_Hours({}).all, refresh_s=60, clock=lambda: now)
    later = {"now": now + timedelta(hours=1)}
    registry.register(
        PaperCollector(tracker, fleet, openings, lambda: NO_MAINTENANCE, clock=lambda: later["now"])
    )
    eta = _samples(registry, "kioskfleet_terminal_paper_eta_seconds")
    assert list(eta) == [("North", "Hall A", "T-1")]
    assert eta["North", "Hall A", "T-1"] == pytest.approx(5 * 3600, rel=0.01)  # aged an hour
    upper = _samples(registry, "kioskfleet_terminal_paper_eta_upper_seconds")
    assert upper["North", "Hall A", "T-1"] > eta["North", "Hall A", "T-1"]
    assert _samples(registry, "kioskfleet_hall_closes_in_seconds") == {("North", "Hall A"): 86400}
    slow = _tracker()  # a roll that lasts past a day: no series
    slow.note_usage("T-1", T0 - timedelta(hours=5), 5)
    registry2 = CollectorRegistry()
    registry2.register(
        PaperCollector(slow, fleet, openings, lambda: NO_MAINTENANCE, clock=lambda: now)
    )
    slow.refresh(now)
    assert _samples(registry2, "kioskfleet_terminal_paper_eta_seconds") == {}
    assert _samples(registry2, "kioskfleet_hall_closes_in_seconds") == {}


def test_the_ingest_feeds_pages_and_printer_changes_once_each_duplicates_not() -> None:
    registry = CollectorRegistry()
    fleet, tracker = FleetState(), _tracker()
    ingest = Ingest(
        fleet,
        RecordingSink(),
        ServerMetrics(registry),
        max_payload_bytes=4096,
        throttled_log=ThrottledLog(
            logging.getLogger("test.paper"), interval_s=10, clock=FakeClock()
        ),
        paper=tracker,
    )

    def send(channel: str, message: Message) -> IngestResult:
        inbound = InboundMessage(
            f"kf/v1/terminals/T-1/{channel}", encode(message), False, at(5), mid=0
        )
        return ingest.handle(inbound)

    low = [periph("receipt0", "receipt_printer", "paper_low"), READER_OK]
    assert send("report", report("T-1", 1, peripherals=low)) is IngestResult.ACCEPTED
    printed = usage("T-1", 2, "tax.invoice.print", pages=20, sent_at=T0 + timedelta(minutes=1))
    assert send("usage", printed) is IngestResult.ACCEPTED
    assert send("usage", printed) is IngestResult.DUPLICATE
    tracker.refresh(T0 + timedelta(hours=2))
    got = tracker.forecast("T-1")
    assert got is not None
    assert (got.basis, got.remaining_pages) == ("reserve", 40)  # 60 - 20, counted once
