"""The fleet state's rules: sequence, connectivity, peripherals, silence, queries, tallies."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import PeripheralCondition, PeripheralKind
from server.errors import InvalidCursorError
from server.fleet_state import FleetState
from server.fleet_views import (
    CONNECTIVITY,
    POSITION_FIELDS,
    REMOVED,
    OfflineReason,
    TerminalFilter,
    TerminalView,
    Verdict,
)
from server.health import Health
from server.terminal_rules import VIEW_FIELDS, transition_cause
from tests.support.fleet_messages import (
    BOOT,
    PRINTER_OK,
    READER_OK,
    T0,
    at,
    boot_event,
    periph,
    peripheral_event,
    report,
    state,
)


@pytest.fixture
def fleet() -> FleetState:
    return FleetState(offline_after_missed_reports=3, default_report_interval_s=60.0)


def view(fleet: FleetState, tid: str = "T-1") -> TerminalView:
    v = fleet.get(tid)
    assert v is not None
    return v


# --- first contact and identity -------------------------------------------------------------


def test_first_report_creates_an_online_terminal_with_identity_and_peripherals(
    fleet: FleetState,
) -> None:
    out = fleet.apply(report(), at(1))
    assert out.verdict is Verdict.ACCEPTED
    v = view(fleet)
    assert (v.hall, v.region, v.model, v.online) == ("Hall A", "North", "KX-200", True)
    assert [p.name for p in v.peripherals] == ["idcard", "printer"]
    assert v.software == {"kiosk-app": "3.1"}
    assert v.report_interval_s == 10.0
    assert v.last_seen == at(1)
    assert v.first_seen == at(1)
    assert v.state_since == at(1)
    assert v.health is Health.OK
    [t] = out.transitions
    assert (t.subject, t.from_state, t.to_state, t.reason) == (
        CONNECTIVITY,
        None,
        "online",
        "report",
    )


def test_unknown_terminal_is_none_and_fleet_counts_terminals(fleet: FleetState) -> None:
    assert fleet.get("nope") is None
    fleet.apply(report("A"), at(1))
    fleet.apply(report("B"), at(1))
    assert len(fleet) == 2


# --- sequence -------------------------------------------------------------------------------


def test_same_boot_and_seq_not_newer_is_a_duplicate_that_changes_nothing(
    fleet: FleetState,
) -> None:
    for seq in range(1, 6):
        fleet.apply(report(seq=seq), at(1))
    out = fleet.apply(
        report(seq=5, peripherals=[periph("printer", "receipt_printer", "jam")]), at(2)
    )
    assert out.verdict is Verdict.DUPLICATE
    assert fleet.apply(report(seq=3), at(2)).verdict is Verdict.DUPLICATE
    v = view(fleet)
    assert v.last_seen == at(1)
    assert {p.condition for p in v.peripherals} == {PeripheralCondition.OK}


def test_skipped_sequence_numbers_are_counted_as_missing(fleet: FleetState) -> None:
    assert fleet.apply(report(seq=1), at(1)).missing == 0
    assert fleet.apply(report(seq=2), at(2)).missing == 0
    assert fleet.apply(report(seq=6), at(3)).missing == 3
    assert view(fleet).last_seq == 6


def test_new_stream_starting_at_seq_1_counts_no_gap(fleet: FleetState) -> None:
    fleet.apply(report(seq=500), at(1))
    out = fleet.apply(boot_event("T-1", 1, boot="boot-bbbb"), at(2))
    assert out.verdict is Verdict.ACCEPTED
    assert out.missing == 0
    v = view(fleet)
    assert (v.boot_id, v.prev_boot_id, v.last_seq, v.agent_version) == (
        "boot-bbbb",
        BOOT,
        1,
        "1.1.0",
    )
    assert fleet.apply(report(seq=2, boot="boot-bbbb"), at(3)).verdict is Verdict.ACCEPTED


def test_new_stream_whose_first_message_is_seq_n_counts_n_minus_1_missing(
    fleet: FleetState,
) -> None:
    fleet.apply(report(seq=1), at(0))
    out = fleet.apply(boot_event("T-1", 4, boot="boot-bbbb"), at(1))
    assert out.missing == 3  # 1, 2 and 3 of the new stream never arrived
    assert view(fleet).seq_gaps == 3


def test_state_message_of_a_new_stream_leaves_the_position_unknown_for_the_next_message(
    fleet: FleetState,
) -> None:
    fleet.apply(report(seq=7), at(0))
    assert fleet.apply(state("T-1", True, seq=0, boot="boot-cccc"), at(1)).missing == 0
    assert view(fleet).last_seq is None
    out = fleet.apply(report(seq=3, boot="boot-cccc"), at(2))
    assert out.missing == 2
    assert (view(fleet).seq_gaps, view(fleet).last_seq) == (6 + 2, 3)  # 1..6 of the first


def test_a_seq_jump_beyond_the_bound_is_refused_and_changes_nothing() -> None:
    fleet = FleetState(max_seq_jump=1000)
    fleet.apply(report(seq=10), at(0))
    before = view(fleet)
    forged = fleet.apply(report(seq=2**53), at(1))
    assert (forged.verdict, forged.reason) == (Verdict.REFUSED, "seq_jump")
    assert view(fleet) == before
    # The real terminal's next messages are not taken for duplicates.
    assert fleet.apply(report(seq=11), at(2)).verdict is Verdict.ACCEPTED
    assert fleet.apply(report(seq=1011), at(3)).verdict is Verdict.ACCEPTED  # 999 missing
    assert view(fleet).seq_gaps == before.seq_gaps + 999


def test_a_new_stream_starting_beyond_the_bound_is_refused_and_a_refused_stranger_is_forgotten() -> (
    None
):
    fleet = FleetState(max_seq_jump=1000)
    fleet.apply(report(seq=5), at(0))
    out = fleet.apply(report(seq=5000, boot="boot-forged"), at(1))
    assert out.verdict is Verdict.REFUSED
    assert view(fleet).boot_id == BOOT
    assert fleet.apply(report("T-2", seq=10**9), at(2)).verdict is Verdict.REFUSED
    assert fleet.get("T-2") is None
    assert len(fleet) == 1
    page = fleet.query(TerminalFilter(), limit=10)
    assert [v.id for v in page.items] == ["T-1"]


def test_delivery_counters_count_reports_events_gaps_and_the_latest_dropped_reports(
    fleet: FleetState,
) -> None:
    fleet.apply(report(seq=1, dropped=0), at(0))
    fleet.apply(report(seq=4, dropped=2), at(1))  # 2, 3 dropped by the outbox
    fleet.apply(report(seq=4, dropped=2), at(2))  # duplicate: not counted
    fleet.apply(peripheral_event("T-1", 5, PRINTER_OK, None), at(3))
    v = view(fleet)
    assert (v.reports_received, v.events_received, v.seq_gaps, v.dropped_reports) == (2, 1, 2, 2)
    [hall] = fleet.halls()
    assert (hall.seq_gaps, hall.dropped_reports) == (2, 2)
    fleet.apply(report(seq=1, boot="boot-dddd"), at(4))  # a new stream: its own drop count
    v = view(fleet)
    assert (v.reports_received, v.seq_gaps, v.dropped_reports) == (3, 2, 0)
    [hall] = fleet.halls()
    assert (hall.seq_gaps, hall.dropped_reports) == (2, 0)


def test_only_a_report_with_changed_peripherals_asks_for_a_peripheral_rewrite(
    fleet: FleetState,
) -> None:
    assert fleet.apply(report(seq=1), at(0)).peripherals_changed  # first contact
    assert not fleet.apply(report(seq=2), at(1)).peripherals_changed
    assert not fleet.apply(report(seq=3, software={"kiosk-app": "3.2"}), at(2)).peripherals_changed
    jam = [periph("printer", "receipt_printer", "jam")]
    assert fleet.apply(report(seq=4, peripherals=jam), at(3)).peripherals_changed
    assert view(fleet).software == {"kiosk-app": "3.1"}  # the last report's software


def test_straggler_from_the_previous_boot_is_stale_and_not_applied(fleet: FleetState) -> None:
    fleet.apply(report(seq=10), at(1))
    fleet.apply(report(seq=0, boot="boot-bbbb"), at(2))
    jam = [periph("printer", "receipt_printer", "jam")]
    assert fleet.apply(report(seq=11, peripherals=jam), at(3)).verdict is Verdict.STALE
    v = view(fleet)
    assert v.boot_id == "boot-bbbb"
    assert all(p.condition is PeripheralCondition.OK for p in v.peripherals)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=80),
    st.integers(min_value=0, max_value=90),
)
def test_any_seq_order_is_accepted_filled_or_duplicate_and_gaps_are_the_unreceived_numbers(
    seqs: list[int], window_s: int
) -> None:
    fleet = FleetState(gap_refill_window_s=window_s)
    accepted: list[int] = []
    taken: set[int] = set()  # accepted or filled
    missing = fills = duplicates = 0
    for i, seq in enumerate(seqs):
        out = fleet.apply(report(seq=seq), at(i))
        if out.filled:
            assert seq not in taken
            assert seq < accepted[-1]
            fills += 1
        elif out.verdict is Verdict.ACCEPTED:
            accepted.append(seq)
            missing += out.missing
        else:
            assert out.verdict is Verdict.DUPLICATE
            duplicates += 1
        if out.accepted:
            taken.add(seq)
    assert len(accepted) + fills + duplicates == len(seqs)
    assert accepted == sorted(set(accepted))  # the position only moves forward
    never_taken = set(range(1, accepted[-1] + 1)) - taken  # streams start at 1
    assert missing - fills == len(never_taken) == view(fleet).seq_gaps
    assert view(fleet).reports_received == len(accepted) + fills


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(min_value=0, max_value=200), min_size=1, max_size=60))
def test_in_order_delivery_counts_exactly_the_missing_numbers_and_no_duplicates(
    seqs: set[int],
) -> None:
    fleet = FleetState()
    ordered = sorted(seqs)
    outs = [fleet.apply(report(seq=s), at(i)) for i, s in enumerate(ordered)]
    assert all(o.verdict is Verdict.ACCEPTED for o in outs)
    expected = len(set(range(1, ordered[-1] + 1)) - seqs)  # streams start at 1
    assert sum(o.missing for o in outs) == expected == view(fleet).seq_gaps


# --- connectivity ---------------------------------------------------------------------------


def test_retained_will_takes_the_terminal_offline_at_server_time(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, sent_at=at(0)), at(1))
    out = fleet.apply(state("T-1", False, seq=0, sent_at=at(-100)), at(50), retained=True)
    [t] = out.transitions
    assert (t.from_state, t.to_state, t.reason) == ("online", "offline", "will")
    assert t.occurred_at == at(50)  # a will's sent_at is its connect time, meaningless here
    v = view(fleet)
    assert (v.online, v.offline_reason, v.state_since) == (False, OfflineReason.WILL, at(50))
    assert v.health is Health.OFFLINE


def test_shutdown_goes_offline_at_the_time_the_agent_said(fleet: FleetState) -> None:
    fleet.apply(report(seq=1), at(1))
    out = fleet.apply(state("T-1", False, reason="shutdown", seq=1, sent_at=at(9)), at(10))
    [t] = out.transitions
    assert (t.reason, t.occurred_at, t.recorded_at) == ("shutdown", at(9), at(10))
    assert view(fleet).offline_reason is OfflineReason.SHUTDOWN


def test_report_older_than_the_will_does_not_bring_the_terminal_back(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, sent_at=at(0)), at(1))
    fleet.apply(state("T-1", False), at(100), retained=True)
    queued = fleet.apply(report(seq=2, sent_at=at(20)), at(101))
    assert queued.verdict is Verdict.ACCEPTED
    assert queued.transitions == ()
    assert view(fleet).online is False
    fresh = fleet.apply(report(seq=3, sent_at=at(150)), at(151))
    assert [(t.to_state, t.reason) for t in fresh.transitions] == [("online", "report")]
    assert view(fleet).online is True


def test_any_accepted_message_overrides_an_offline_by_timeout(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, sent_at=at(0), interval=10), at(0))
    assert [t.reason for t in fleet.expire_silent(at(31))] == ["timeout"]
    # Even with a device clock far behind the server's, the terminal is back.
    out = fleet.apply(report(seq=2, sent_at=at(-3600)), at(40))
    assert [(t.from_state, t.to_state) for t in out.transitions] == [("offline", "online")]


def test_an_offline_another_replica_recorded_is_adopted_without_a_transition(
    fleet: FleetState,
) -> None:
    fleet.apply(report("T-1", seq=1, sent_at=at(0), interval=10), at(0))
    fleet.apply(report("T-2", seq=1, sent_at=at(0), interval=10), at(0))
    fleet.apply(report("T-2", seq=2, sent_at=at(35), interval=10), at(35))  # back since
    recorded = [("T-1", at(31), OfflineReason.TIMEOUT), ("T-2", at(31), OfflineReason.TIMEOUT)]
    assert fleet.adopt_offline([*recorded, ("T-unknown", at(31), OfflineReason.WILL)]) == 1
    v = view(fleet, "T-1")
    assert (v.online, v.state_since, v.offline_reason) == (False, at(31), OfflineReason.TIMEOUT)
    assert view(fleet, "T-2").online  # it spoke after the other replica's sweep
    assert fleet.expire_silent(at(40)) == []  # T-1 is not taken offline a second time
    assert [(h.online, h.offline) for h in fleet.halls()] == [(1, 1)]  # tallies follow


def test_live_online_state_brings_the_terminal_online(fleet: FleetState) -> None:
    fleet.apply(report(seq=1), at(1))
    fleet.apply(state("T-1", False), at(10))
    out = fleet.apply(state("T-1", True, seq=1, sent_at=at(-500), boot="boot-cccc"), at(20))
    [t] = out.transitions
    assert (t.to_state, t.reason) == ("online", "connect")
    v = view(fleet)
    assert v.online
    assert v.last_seen == at(20)
    assert v.boot_id == "boot-cccc"


def test_retained_online_older_than_what_we_know_is_stale(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, sent_at=at(100)), at(100))
    fleet.expire_silent(at(1000))
    out = fleet.apply(state("T-1", True, sent_at=at(50)), at(1001), retained=True)
    assert out.verdict is Verdict.STALE
    assert view(fleet).online is False


def test_retained_online_newer_than_what_we_know_brings_the_terminal_online(
    fleet: FleetState,
) -> None:
    fleet.apply(report(seq=1, sent_at=at(100)), at(100))
    fleet.apply(state("T-1", False), at(200))
    out = fleet.apply(state("T-1", True, sent_at=at(300)), at(400), retained=True)
    assert out.verdict is Verdict.ACCEPTED
    assert view(fleet).online is True


def test_redelivered_identical_state_message_is_a_duplicate(fleet: FleetState) -> None:
    will = state("T-1", False, seq=4, sent_at=at(5))
    assert fleet.apply(will, at(10)).verdict is Verdict.ACCEPTED
    fleet.apply(report(seq=5, sent_at=at(20), boot=BOOT), at(20))
    assert fleet.apply(will, at(30), retained=True).verdict is Verdict.DUPLICATE
    assert view(fleet).online is True


def test_terminal_first_seen_through_its_will_is_offline_without_a_from_state(
    fleet: FleetState,
) -> None:
    out = fleet.apply(state("T-9", False, hall="Hall Z"), at(1), retained=True)
    [t] = out.transitions
    assert (t.from_state, t.to_state) == (None, "offline")
    v = view(fleet, "T-9")
    assert (v.online, v.hall) == (False, "Hall Z")


def test_state_from_the_previous_boot_is_stale(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, boot="boot-old1"), at(1))
    fleet.apply(report(seq=0, boot="boot-new1"), at(2))
    out = fleet.apply(state("T-1", False, boot="boot-old1"), at(3))
    assert out.verdict is Verdict.STALE
    assert view(fleet).online is True


# --- silence --------------------------------------------------------------------------------


def test_silence_longer_than_missed_reports_times_interval_goes_offline(
    fleet: FleetState,
) -> None:
    fleet.apply(report("fast", interval=10), at(0))
    fleet.apply(report("slow", interval=100), at(0))
    assert fleet.expire_silent(at(30)) == []
    [t] = fleet.expire_silent(at(30.5))
    assert (t.terminal_id, t.to_state, t.reason, t.occurred_at) == (
        "fast",
        "offline",
        "timeout",
        at(30.5),
    )
    assert view(fleet, "fast").offline_reason is OfflineReason.TIMEOUT
    assert view(fleet, "slow").online is True
    assert fleet.expire_silent(at(31)) == []  # already offline: no second transition


def test_terminal_without_a_report_interval_uses_the_default(fleet: FleetState) -> None:
    fleet.apply(state("T-1", True), at(0))
    assert fleet.expire_silent(at(180)) == []
    assert len(fleet.expire_silent(at(181))) == 1


def test_a_claimed_report_interval_longer_than_the_cap_cannot_hide_a_silence() -> None:
    capped = FleetState(max_report_interval_s=600)
    capped.apply(report("lazy", interval=86400), at(0))  # a forged or broken "once a day"
    assert capped.expire_silent(at(1800)) == []
    [t] = capped.expire_silent(at(1801))  # 3 x 600 s, not 3 days
    assert (t.terminal_id, t.reason) == ("lazy", "timeout")
    with pytest.raises(ValueError, match="max_report_interval_s"):
        FleetState(default_report_interval_s=60, max_report_interval_s=30)


def test_silence_before_the_broker_link_came_up_is_not_held_against_terminals(
    fleet: FleetState,
) -> None:
    fleet.apply(report(interval=10), at(0))
    assert fleet.expire_silent(at(100), listening_since=at(90)) == []
    assert len(fleet.expire_silent(at(121), listening_since=at(90))) == 1


def test_a_transition_names_the_message_behind_it_and_the_sweeps_name_none(
    fleet: FleetState,
) -> None:
    # All at one device time: a stream message and a state message of the same seq differ.
    [first] = fleet.apply(state("T-1", True, seq=0, sent_at=at(0)), at(0)).transitions
    jam = periph("printer", "receipt_printer", "jam")
    [jammed] = fleet.apply(report(seq=4, sent_at=at(0), peripherals=[jam]), at(1)).transitions
    [lost] = fleet.apply(state("T-1", False, seq=4, sent_at=at(0)), at(2)).transitions
    [back] = fleet.apply(state("T-1", True, seq=4, sent_at=at(0)), at(3)).transitions
    assert first.cause == f"{BOOT}:0:state:{at(0).isoformat()}"
    assert jammed.cause == f"{BOOT}:4"
    assert lost.cause == back.cause == f"{BOOT}:4:state:{at(0).isoformat()}"
    assert (lost.to_state, back.to_state) == ("offline", "online")  # the key tells them apart
    assert lost.occurred_at == at(2)  # the will's time is the server's: not in the key
    [timeout] = fleet.expire_silent(at(1000))
    assert timeout.cause is None


def test_the_longest_cause_the_wire_allows_fits_its_column() -> None:
    longest = state(
        "T-1",
        False,
        seq=2**53,
        boot="b" * 64,
        sent_at=datetime(2199, 12, 31, 23, 59, 59, 999999, UTC),
    )
    assert len(transition_cause(longest)) <= 128  # transition.cause is varchar(128)


# --- peripherals ----------------------------------------------------------------------------


def test_peripheral_fault_is_a_transition_with_fault_code_and_device_time(
    fleet: FleetState,
) -> None:
    fleet.apply(report(seq=1, sent_at=at(0)), at(0))
    out_paper = periph("printer", "receipt_printer", "paper_out", fault_code="E12")
    out = fleet.apply(report(seq=2, sent_at=at(10), peripherals=[out_paper, READER_OK]), at(11))
    assert out.peripherals_changed
    [t] = out.transitions
    assert (t.subject, t.kind, t.from_state, t.to_state, t.fault_code) == (
        "printer",
        "receipt_printer",
        "ok",
        "paper_out",
        "E12",
    )
    assert (t.occurred_at, t.recorded_at) == (at(10), at(11))
    printer = next(p for p in view(fleet).peripherals if p.name == "printer")
    assert (printer.condition, printer.since) == (PeripheralCondition.PAPER_OUT, at(10))
    assert view(fleet).health is Health.FAULTY  # paper out blocks service


def test_unchanged_report_changes_no_peripheral_and_keeps_since(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, sent_at=at(0)), at(0))
    out = fleet.apply(report(seq=2, sent_at=at(10)), at(10))
    assert not out.peripherals_changed
    assert out.transitions == ()
    assert {p.since for p in view(fleet).peripherals} == {at(0)}


def test_detail_change_updates_the_peripheral_without_a_transition(fleet: FleetState) -> None:
    fleet.apply(report(seq=1), at(0))
    low = [periph("printer", "receipt_printer", detail="roll 40%"), READER_OK]
    out = fleet.apply(report(seq=2, sent_at=at(5), peripherals=low), at(5))
    assert out.peripherals_changed
    assert out.transitions == ()
    printer = next(p for p in view(fleet).peripherals if p.name == "printer")
    assert (printer.detail, printer.since) == ("roll 40%", T0)


def test_peripheral_first_seen_with_a_problem_records_a_transition_but_ok_does_not(
    fleet: FleetState,
) -> None:
    jam = periph("printer", "receipt_printer", "jam")
    out = fleet.apply(report(peripherals=[jam, READER_OK]), at(0))
    peripheral_transitions = [t for t in out.transitions if t.subject != CONNECTIVITY]
    assert [(t.subject, t.from_state, t.to_state) for t in peripheral_transitions] == [
        ("printer", None, "jam")
    ]


def test_peripheral_missing_from_a_report_is_removed(fleet: FleetState) -> None:
    fleet.apply(report(seq=1), at(0))
    out = fleet.apply(report(seq=2, sent_at=at(5), peripherals=[PRINTER_OK]), at(5))
    assert out.peripherals_changed
    [t] = out.transitions
    assert (t.subject, t.from_state, t.to_state) == ("idcard", "ok", REMOVED)
    assert [p.name for p in view(fleet).peripherals] == ["printer"]


def test_peripheral_event_changes_only_that_peripheral(fleet: FleetState) -> None:
    fleet.apply(report(seq=1), at(0))
    fault = periph("idcard", "id_card_reader", "fault", fault_code="SCARD_E_NO_READERS")
    out = fleet.apply(peripheral_event("T-1", 2, fault, "ok", sent_at=at(3)), at(4))
    [t] = out.transitions
    assert (t.subject, t.to_state, t.fault_code) == ("idcard", "fault", "SCARD_E_NO_READERS")
    conditions = {p.name: p.condition for p in view(fleet).peripherals}
    assert conditions == {"printer": PeripheralCondition.OK, "idcard": PeripheralCondition.FAULT}


def test_fault_code_change_in_the_same_condition_is_a_transition(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, peripherals=[periph("r", "qr_scanner", "fault", fault_code="A")]), T0)
    out = fleet.apply(
        report(seq=2, peripherals=[periph("r", "qr_scanner", "fault", fault_code="B")]), at(1)
    )
    [t] = out.transitions
    assert (t.from_state, t.to_state, t.fault_code) == ("fault", "fault", "B")


# --- queries --------------------------------------------------------------------------------


def _populate(fleet: FleetState) -> None:
    jam = periph("printer", "receipt_printer", "jam")
    fault = periph("idcard", "id_card_reader", "fault")
    fleet.apply(report("N-1", hall="H1", region="North"), at(0))
    fleet.apply(report("N-2", hall="H1", region="North", peripherals=[jam, READER_OK]), at(0))
    fleet.apply(report("N-3", hall="H2", region="North", peripherals=[PRINTER_OK, fault]), at(0))
    fleet.apply(report("S-1", hall="H9", region="South", peripherals=[jam, fault]), at(0))
    fleet.apply(report("S-2", hall="H9", region="South"), at(0))
    fleet.apply(state("S-2", False), at(1))


def _ids(fleet: FleetState, **flt: Any) -> list[str]:
    return [v.id for v in fleet.query(TerminalFilter(**flt), limit=100).items]


def test_query_filters_by_region_hall_state_kind_and_condition(fleet: FleetState) -> None:
    _populate(fleet)
    assert _ids(fleet, region="North") == ["N-1", "N-2", "N-3"]
    assert _ids(fleet, hall="H9") == ["S-1", "S-2"]
    assert _ids(fleet, online=False) == ["S-2"]
    assert _ids(fleet, condition=PeripheralCondition.JAM) == ["N-2", "S-1"]
    assert _ids(fleet, peripheral_kind=PeripheralKind.ID_CARD_READER, region="South") == [
        "S-1",
        "S-2",
    ]
    # kind and condition must hold for the same peripheral
    assert (
        _ids(
            fleet,
            peripheral_kind=PeripheralKind.RECEIPT_PRINTER,
            condition=PeripheralCondition.FAULT,
        )
        == []
    )
    assert _ids(
        fleet, peripheral_kind=PeripheralKind.ID_CARD_READER, condition=PeripheralCondition.FAULT
    ) == ["N-3", "S-1"]


def test_cursor_pagination_visits_every_match_once_in_id_order(fleet: FleetState) -> None:
    for i in (7, 3, 11, 1, 5, 9, 2):
        fleet.apply(report(f"T-{i:02d}"), at(0))
    seen: list[str] = []
    cursor = None
    while True:
        page = fleet.query(TerminalFilter(), limit=3, cursor=cursor)
        assert page.total == 7
        seen.extend(v.id for v in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(seen) == [f"T-{i:02d}" for i in (1, 2, 3, 5, 7, 9, 11)]


def test_last_full_page_has_no_next_cursor(fleet: FleetState) -> None:
    for i in range(4):
        fleet.apply(report(f"T-{i}"), at(0))
    first = fleet.query(TerminalFilter(), limit=2)
    second = fleet.query(TerminalFilter(), limit=2, cursor=first.next_cursor)
    assert [v.id for v in second.items] == ["T-2", "T-3"]
    assert second.next_cursor is None


def test_foreign_cursor_is_refused(fleet: FleetState) -> None:
    with pytest.raises(InvalidCursorError):
        fleet.query(TerminalFilter(), limit=10, cursor="%%%not-base64")


def test_halls_count_terminals_by_state_and_problems_by_kind_and_condition(
    fleet: FleetState,
) -> None:
    _populate(fleet)
    halls = {(h.region, h.hall): h for h in fleet.halls()}
    h1 = halls[("North", "H1")]
    assert (h1.total, h1.online, h1.offline, h1.degraded, h1.with_peripheral_problems) == (
        2,
        2,
        0,
        1,
        1,
    )
    h9 = halls[("South", "H9")]
    assert (h9.total, h9.online, h9.offline, h9.degraded, h9.with_peripheral_problems) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert {(p.kind, p.condition, p.count) for p in h9.peripheral_problems} == {
        (PeripheralKind.RECEIPT_PRINTER, PeripheralCondition.JAM, 1),
        (PeripheralKind.ID_CARD_READER, PeripheralCondition.FAULT, 1),
    }
    assert {v.id for v in fleet.problem_terminals()} == {"N-2", "N-3", "S-1", "S-2"}


def test_terminal_moving_to_another_hall_moves_its_counts(fleet: FleetState) -> None:
    fleet.apply(report(seq=1, hall="Old"), at(0))
    fleet.apply(report(seq=2, hall="New"), at(1))
    assert [(h.hall, h.total) for h in fleet.halls()] == [("New", 1)]
    assert fleet.hall_regions() == {"New": "North"}


def test_hall_regions_are_those_the_terminals_report_and_follow_a_move(
    fleet: FleetState,
) -> None:
    _populate(fleet)
    assert fleet.hall_regions() == {"H1": "North", "H2": "North", "H9": "South"}
    fleet.apply(report("S-1", seq=50, hall="H9", region="East"), at(100))
    fleet.apply(report("S-2", seq=50, hall="H9", region="East"), at(100))
    assert fleet.hall_regions() == {"H1": "North", "H2": "North", "H9": "East"}


def test_load_restores_the_fleet_and_its_dedup_position(fleet: FleetState) -> None:
    fleet.apply(report("A", seq=7, peripherals=[periph("printer", "receipt_printer", "jam")]), T0)
    fleet.apply(report("B", seq=2), T0)
    restored = FleetState()
    restored.load(fleet.snapshot(["A", "B", "missing"]))
    assert [(h.hall, h.total, h.degraded) for h in restored.halls()] == [("Hall A", 2, 1)]
    assert restored.apply(report("A", seq=7), at(1)).verdict is Verdict.DUPLICATE
    assert restored.apply(report("A", seq=9), at(1)).missing == 1


# --- model-based: incremental tallies always equal a recount ----------------------------------

_CONDITIONS = ["ok", "ok", "paper_out", "jam"]
_events = st.lists(
    st.tuples(
        st.sampled_from(["report", "event", "will", "online", "sweep"]),
        st.sampled_from(["A", "B", "C"]),
        st.sampled_from(["H1", "H2"]),
        st.sampled_from(_CONDITIONS),
        st.booleans(),
    ),
    max_size=40,
)


def _recount(fleet: FleetState) -> dict[tuple[str | None, str | None], tuple[object, ...]]:
    page = fleet.query(TerminalFilter(), limit=1000)
    out: dict[tuple[str | None, str | None], list[int]] = {}
    problems: dict[tuple[str | None, str | None], Counter[tuple[str, str]]] = {}
    for v in page.items:
        key = (v.region, v.hall)
        c = out.setdefault(key, [0, 0, 0, 0])
        bad = [p for p in v.peripherals if p.is_problem]
        c[0] += 1
        c[1] += v.online
        c[2] += bool(bad) and v.online
        c[3] += bool(bad)
        problems.setdefault(key, Counter()).update((p.kind.value, p.condition.value) for p in bad)
    return {k: tuple([*c, *sorted(problems[k].items())]) for k, c in out.items()}


@settings(max_examples=150, deadline=None)
@given(_events)
def test_incremental_hall_tallies_always_equal_a_full_recount(
    steps: list[tuple[str, str, str, str, bool]],
) -> None:
    fleet = FleetState(offline_after_missed_reports=1)
    seq: Counter[str] = Counter()
    for i, (what, tid, hall, condition, with_reader) in enumerate(steps):
        now = at(i * 20)
        seq[tid] += 1
        printer = periph("printer", "receipt_printer", condition)
        if what == "report":
            ps = [printer, READER_OK] if with_reader else [printer]
            fleet.apply(report(tid, seq[tid], sent_at=now, hall=hall, peripherals=ps), now)
        elif what == "event":
            fleet.apply(peripheral_event(tid, seq[tid], printer, None, sent_at=now), now)
        elif what in ("will", "online"):
            fleet.apply(state(tid, what == "online", seq=seq[tid], sent_at=now), now)
        else:
            fleet.expire_silent(now)
    tallies: dict[tuple[str | None, str | None], tuple[object, ...]] = {
        (h.region, h.hall): (
            h.total,
            h.online,
            h.degraded,
            h.with_peripheral_problems,
            *sorted(((p.kind.value, p.condition.value), p.count) for p in h.peripheral_problems),
        )
        for h in fleet.halls()
    }
    assert tallies == _recount(fleet)
    for h in fleet.halls():
        assert h.offline == h.total - h.online


# --- position-only outcomes (the writer then updates just those columns) ---------------------

_STORED_FIELDS = [f for f in VIEW_FIELDS if f not in POSITION_FIELDS]


def test_an_identical_heartbeat_is_position_only_and_a_change_is_not(fleet: FleetState) -> None:
    assert not fleet.apply(report(seq=1), at(0)).position_only  # a new terminal: whole row
    assert fleet.apply(report(seq=2, sent_at=at(10)), at(10)).position_only
    assert fleet.apply(report(seq=3, sent_at=at(20)), at(20)).position_only
    assert not fleet.apply(report(seq=5, sent_at=at(30)), at(30)).position_only  # a gap
    assert not fleet.apply(report(seq=6, hall="Hall B"), at(40)).position_only
    low = periph("printer", "receipt_printer", "paper_low")
    assert not fleet.apply(report(seq=7, hall="Hall B", peripherals=[low]), at(50)).position_only
    assert not fleet.apply(report(seq=1, boot="boot-bbbb", hall="Hall B"), at(60)).position_only


_MESSAGES = st.one_of(
    st.builds(
        lambda seq, boot, hall, cond, dropped: report(
            seq=seq,
            boot=boot,
            hall=hall,
            peripherals=[periph("printer", "receipt_printer", cond), READER_OK],
            dropped=dropped,
        ),
        st.integers(0, 6),
        st.sampled_from([BOOT, "boot-bbbb"]),
        st.sampled_from(["Hall A", "Hall B"]),
        st.sampled_from(["ok", "paper_low"]),
        st.integers(0, 1),
    ),
    st.builds(
        lambda seq, cond: peripheral_event(
            "T-1", seq, periph("printer", "receipt_printer", cond), None
        ),
        st.integers(0, 6),
        st.sampled_from(["ok", "paper_out"]),
    ),
    st.builds(
        lambda seq, boot: boot_event("T-1", seq, boot=boot),
        st.integers(0, 6),
        st.sampled_from([BOOT, "boot-bbbb"]),
    ),
    st.builds(lambda online: state("T-1", online), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_MESSAGES, min_size=1, max_size=12))
def test_a_position_only_outcome_changes_no_stored_field_but_the_position(
    messages: list[Any],
) -> None:
    fleet = FleetState()
    for i, message in enumerate(messages):
        before = fleet.get("T-1")
        outcome = fleet.apply(message, at(i))
        if outcome.position_only:
            assert outcome.accepted
            assert before is not None
            after = fleet.get("T-1")
            assert after is not None
            assert [getattr(after, f) for f in _STORED_FIELDS] == [
                getattr(before, f) for f in _STORED_FIELDS
            ]
