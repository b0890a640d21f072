"""Open sequence gaps: noted, bounded, expired, filled; and the rules' gap fill (history only)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.committed import MAX_MISSING_RANGES
from server import stream_gaps
from server.fleet_state import FleetState
from server.fleet_views import TerminalView, Verdict
from tests.support.fleet_messages import (
    at,
    boot_event,
    periph,
    peripheral_event,
    report,
    update_status,
)

WINDOW = timedelta(seconds=60)


def view(fleet: FleetState, tid: str = "T-1") -> TerminalView:
    v = fleet.get(tid)
    assert v is not None
    return v


# --- the pure ranges ------------------------------------------------------------------------


def test_a_fill_splits_its_range_and_a_seq_outside_every_range_is_no_fill() -> None:
    gaps = stream_gaps.note((), 3, 7, at(0), WINDOW)
    filled = stream_gaps.fill(gaps, 5, at(1), WINDOW)
    assert filled is not None
    assert stream_gaps.open_ranges(filled, at(1), WINDOW) == ((3, 4), (6, 7))
    assert stream_gaps.fill(filled, 5, at(1), WINDOW) is None
    assert stream_gaps.fill(filled, 8, at(1), WINDOW) is None
    edges = stream_gaps.fill(stream_gaps.fill(filled, 3, at(1), WINDOW) or (), 7, at(1), WINDOW)
    assert stream_gaps.open_ranges(edges or (), at(1), WINDOW) == ((4, 4), (6, 6))


def test_a_gap_is_open_for_the_window_and_then_forgotten() -> None:
    gaps = stream_gaps.note((), 3, 3, at(0), WINDOW)
    gaps = stream_gaps.note(gaps, 9, 9, at(30), WINDOW)
    assert stream_gaps.open_ranges(gaps, at(59), WINDOW) == ((3, 3), (9, 9))
    assert stream_gaps.open_ranges(gaps, at(60), WINDOW) == ((9, 9),)
    assert stream_gaps.fill(gaps, 3, at(60), WINDOW) is None  # forgotten: a counted gap
    assert stream_gaps.open_ranges(gaps, at(30), timedelta(0)) == ()  # a window of 0: off
    assert stream_gaps.note(gaps, 20, 20, at(100), WINDOW) == (stream_gaps.Gap(20, 20, at(100)),)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3)), min_size=1, max_size=60))
def test_at_most_max_missing_ranges_are_kept_the_newest_ones(steps: list[tuple[int, int]]) -> None:
    gaps: stream_gaps.Gaps = ()
    top = 0
    noted = []
    for skip, size in steps:
        first = top + skip
        gaps = stream_gaps.note(gaps, first, first + size, at(0), WINDOW)
        noted.append((first, first + size))
        top = first + size + 1
    assert stream_gaps.open_ranges(gaps, at(0), WINDOW) == tuple(noted[-MAX_MISSING_RANGES:])


def test_splitting_a_range_keeps_the_bound_by_forgetting_the_oldest() -> None:
    gaps: stream_gaps.Gaps = ()
    for i in range(MAX_MISSING_RANGES):
        gaps = stream_gaps.note(gaps, 10 * i + 1, 10 * i + 5, at(0), WINDOW)
    split = stream_gaps.fill(gaps, 10 * (MAX_MISSING_RANGES - 1) + 3, at(0), WINDOW)
    ranges = stream_gaps.open_ranges(split or (), at(0), WINDOW)
    assert len(ranges) == MAX_MISSING_RANGES
    assert ranges[0] == (11, 15)  # (1, 5) forgotten
    assert ranges[-2:] == ((151, 152), (154, 155))


# --- the rules ------------------------------------------------------------------------------


def test_a_late_message_inside_an_open_gap_is_a_fill_counted_once() -> None:
    fleet = FleetState()
    fleet.apply(report(seq=1), at(0))
    assert fleet.apply(report(seq=4), at(1)).missing == 2
    assert fleet.open_gaps(["T-1"], at(2)) == {"T-1": ((2, 3),)}
    out = fleet.apply(report(seq=3), at(2))
    assert (out.verdict, out.filled, out.retally, out.missing) == (Verdict.ACCEPTED, True, True, 0)
    assert fleet.apply(report(seq=3), at(3)).verdict is Verdict.DUPLICATE  # filled already
    assert fleet.apply(report(seq=1), at(3)).verdict is Verdict.DUPLICATE  # never a gap
    v = view(fleet)
    assert (v.last_seq, v.reports_received, v.seq_gaps) == (4, 3, 1)
    assert fleet.open_gaps(["T-1"], at(3)) == {"T-1": ((2, 2),)}
    assert fleet.open_gaps(["T-1"], at(62)) == {}  # the window passed: 2 stays a counted gap
    assert fleet.apply(report(seq=2), at(62)).verdict is Verdict.DUPLICATE
    assert view(fleet).seq_gaps == 1


def test_a_fill_rolls_back_no_live_state() -> None:
    fleet = FleetState()
    jam = [periph("printer", "receipt_printer", "jam")]
    fleet.apply(report(seq=1, sent_at=at(1)), at(1))
    fleet.apply(report(seq=3, sent_at=at(3), dropped=4), at(3))
    before = view(fleet)
    out = fleet.apply(report(seq=2, sent_at=at(2), peripherals=jam, hall="Old hall"), at(4))
    assert out.filled
    assert out.transitions == ()
    assert not out.peripherals_changed
    after = view(fleet)
    for name in ("peripherals", "hall", "last_seen", "last_sent_at", "online", "dropped_reports"):
        assert getattr(after, name) == getattr(before, name), name
    assert (after.reports_received, after.seq_gaps) == (3, 0)


def test_a_fill_of_an_event_counts_it_and_changes_no_peripheral() -> None:
    fleet = FleetState()
    ok, jam = periph("printer", "receipt_printer"), periph("printer", "receipt_printer", "jam")
    fleet.apply(report(seq=1, sent_at=at(1)), at(1))
    fleet.apply(peripheral_event("T-1", 3, ok, "jam", sent_at=at(3)), at(3))
    out = fleet.apply(peripheral_event("T-1", 2, jam, "ok", sent_at=at(2)), at(4))
    assert out.filled
    assert out.transitions == ()
    v = view(fleet)
    assert (v.events_received, v.seq_gaps) == (2, 0)
    assert all(not p.is_problem for p in v.peripherals)


def test_an_update_fill_after_a_later_status_is_superseded_one_before_is_not() -> None:
    fleet = FleetState()
    fleet.apply(update_status("T-1", 1, "downloading"), at(0))
    fleet.apply(update_status("T-1", 4, "succeeded"), at(1))
    late = fleet.apply(update_status("T-1", 3, "installing"), at(2))
    assert late.filled
    assert late.superseded
    fleet.apply(report(seq=7), at(3))  # 5, 6 missing; no update status after them
    newest = fleet.apply(update_status("T-1", 6, "failed", reason="download_failed"), at(4))
    assert newest.filled
    assert not newest.superseded
    older = fleet.apply(update_status("T-1", 5, "installing"), at(5))
    assert older.filled
    assert older.superseded


def test_a_new_stream_forgets_the_open_gaps_of_the_old_one() -> None:
    fleet = FleetState()
    fleet.apply(report(seq=1), at(0))
    fleet.apply(report(seq=5), at(1))
    fleet.apply(boot_event("T-1", 1, boot="boot-bbbb"), at(2))
    assert fleet.open_gaps(["T-1"], at(3)) == {}
    assert fleet.apply(report(seq=3), at(3)).verdict is Verdict.STALE
