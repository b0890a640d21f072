"""What the ingest queues reaches the database in batches; failures are retried, bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from protocol.codec import encode
from protocol.messages import Message
from protocol.topics import Channel, topic
from server.errors import StorageDataError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import Outcome
from server.inbound import Delivery, InboundMessage
from server.ingest import Ingest
from server.metrics import ServerMetrics
from server.records import WriteBatch
from server.scheduler import OfflineSweep
from server.write_behind import Confirmation, WriteBehind
from tests.support.fleet_messages import (
    at,
    periph,
    peripheral_event,
    report,
    update_status,
)


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[WriteBatch] = []
        self.fail = False
        self.refuse: set[str] = set()  # terminals whose rows the "database" refuses for good

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        if self.fail:
            raise StorageError("write batch", "database is locked")
        ids = {v.id for v in batch.terminals} | {t.terminal_id for t in batch.transitions}
        if ids & self.refuse:
            raise StorageDataError("write batch", "value too long")
        self.batches.append(batch)


class Acks:
    def __init__(self) -> None:
        self.sent: list[Delivery] = []

    def __call__(self, deliveries: Sequence[Delivery]) -> None:
        self.sent.extend(deliveries)


def _rig(
    max_pending: int = 1000, max_acks: int = 400
) -> tuple[FleetState, FakeStore, WriteBehind, CollectorRegistry]:
    fleet = FleetState()
    store = FakeStore()
    registry = CollectorRegistry()
    writer = WriteBehind(
        store,
        fleet.snapshot,
        ServerMetrics(registry),
        acknowledge=ACKS,
        interval_s=3600,
        max_pending_acks=max_acks,
        max_pending_transitions=max_pending,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )
    ACKS.sent.clear()
    return fleet, store, writer, registry


ACKS = Acks()


def _apply(fleet: FleetState, writer: WriteBehind, *messages: object, mid: int = 0) -> None:
    for i, m in enumerate(messages):
        out = fleet.apply(m, at(i))  # type: ignore[arg-type]
        writer.record(
            m.terminal_id,  # type: ignore[attr-defined]
            peripherals_changed=out.peripherals_changed,
            transitions=out.transitions,
            delivery=(1, mid + i) if mid else None,
        )


def test_many_reports_of_one_terminal_become_one_row_write_with_the_latest_state() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, *(report(seq=i, sent_at=at(i)) for i in range(50)))
    assert writer.flush()
    [batch] = store.batches
    [terminal] = batch.terminals
    assert (terminal.id, terminal.last_seq, terminal.last_seen) == ("T-1", 49, at(49))
    assert batch.peripheral_ids == frozenset({"T-1"})  # first sighting wrote peripherals
    assert [t.to_state for t in batch.transitions] == ["online"]


def test_every_accepted_report_reaches_the_next_flush_with_its_position_and_counters() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1))
    writer.flush()
    _apply(fleet, writer, report(seq=2), report(seq=5))
    assert writer.flush()
    second = store.batches[1]
    [v] = second.terminals
    assert (v.last_seq, v.reports_received, v.seq_gaps) == (5, 3, 2)
    assert second.peripheral_ids == frozenset()
    assert second.transitions == []


def test_deliveries_are_acknowledged_only_after_the_commit_in_receive_order() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1), report(seq=2), mid=7)
    writer.settle((1, 9))  # a duplicate received after them
    assert ACKS.sent == []
    store.fail = True
    assert not writer.flush()
    assert ACKS.sent == []  # not committed: the broker keeps them
    assert writer.pending_acks() == 3
    store.fail = False
    assert writer.flush()
    assert ACKS.sent == [(1, 7), (1, 8), (1, 9)]
    assert writer.pending_acks() == 0


def test_settled_messages_alone_are_acknowledged_without_a_write() -> None:
    _, store, writer, _ = _rig()
    writer.settle((1, 3))
    writer.settle(None)  # QoS 0
    assert writer.flush()
    assert (store.batches, ACKS.sent) == ([], [(1, 3)])


def test_reaching_the_pending_ack_bound_wakes_the_flusher_early() -> None:
    fleet, _, writer, _ = _rig(max_acks=3)
    writer.start()
    try:
        _apply(fleet, writer, report(seq=1), report(seq=2), report(seq=3), mid=1)
        deadline = time.monotonic() + 10
        while ACKS.sent != [(1, 1), (1, 2), (1, 3)] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ACKS.sent == [(1, 1), (1, 2), (1, 3)]  # long before the 3600 s interval
    finally:
        writer.stop()


def test_rows_refused_for_good_are_isolated_dropped_counted_and_acknowledged() -> None:
    fleet, store, writer, registry = _rig()
    for i, tid in enumerate(["T-1", "T-2", "T-3", "T-4"]):
        _apply(fleet, writer, report(tid, 1), mid=10 * (i + 1))
    store.refuse = {"T-3"}
    assert writer.flush()
    written = sorted(v.id for b in store.batches for v in b.terminals)
    assert written == ["T-1", "T-2", "T-4"]
    assert registry.get_sample_value("kioskfleet_db_rejected_rows_total") == 1 + 2 + 1
    assert ACKS.sent == [(1, 10), (1, 20), (1, 30), (1, 40)]  # in receive order, T-3's too
    assert writer.failure is None
    assert writer.pending() == (0, 0)


def test_stop_writes_what_is_pending_and_acknowledges_it() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1))
    writer.flush()
    _apply(fleet, writer, report(seq=2), mid=5)
    assert writer.stop()
    assert store.batches[-1].terminals[0].last_seq == 2
    assert ACKS.sent == [(1, 5)]


def test_recovery_after_a_failure_is_remembered_for_the_offline_grace_period() -> None:
    fleet, store, writer, _ = _rig()
    assert writer.recovered_at is None
    _apply(fleet, writer, report(seq=1))
    store.fail = True
    writer.flush()
    store.fail = False
    writer.flush()
    assert writer.recovered_at == datetime(2026, 1, 1, tzinfo=UTC)


def test_nothing_pending_writes_nothing() -> None:
    _, store, writer, _ = _rig()
    assert writer.flush()
    assert store.batches == []


def test_failed_flush_keeps_the_batch_reports_failure_and_retries_it() -> None:
    fleet, store, writer, registry = _rig()
    _apply(fleet, writer, report(seq=1))
    store.fail = True
    assert not writer.flush()
    assert writer.failure is not None
    assert "database is locked" in writer.failure
    assert registry.get_sample_value("kioskfleet_db_errors_total") == 1
    _apply(fleet, writer, report(seq=2, peripherals=[periph("printer", "receipt_printer", "jam")]))
    store.fail = False
    assert writer.flush()
    assert writer.failure is None
    [batch] = store.batches
    assert [t.to_state for t in batch.transitions] == ["online", "jam", "removed"]
    assert batch.terminals[0].last_seq == 2
    assert writer.pending() == (0, 0)


def test_pending_transitions_are_bounded_by_dropping_the_oldest() -> None:
    fleet, store, writer, registry = _rig(max_pending=3)
    store.fail = True
    conditions = ["jam", "ok", "paper_out", "ok", "jam"]
    for i, c in enumerate(conditions):
        _apply(
            fleet, writer, report(seq=i + 1, peripherals=[periph("printer", "receipt_printer", c)])
        )
        writer.flush()
    assert writer.pending() == (1, 3)
    assert registry.get_sample_value("kioskfleet_db_dropped_transitions_total") == 3
    store.fail = False
    writer.flush()
    assert [t.to_state for t in store.batches[0].transitions] == ["paper_out", "ok", "jam"]


def test_stop_flushes_what_is_pending() -> None:
    fleet, store, writer, _ = _rig()
    writer.start()
    _apply(fleet, writer, report(seq=1))
    assert writer.stop()
    assert [v.id for v in store.batches[-1].terminals] == ["T-1"]


def _sweep(
    fleet: FleetState,
    writer: WriteBehind,
    registry: CollectorRegistry,
    now: float,
    writes: Callable[[str], bool] | None = None,
) -> OfflineSweep:
    """The sweep listening since ``at(0)``, its clock at ``at(now)``."""
    return OfflineSweep(
        fleet,
        writer,
        ServerMetrics(registry),
        listening_since=lambda: at(0),
        clock=lambda: at(now),
        writes=writes,
    )


def test_offline_sweep_records_timeouts_and_counts_them() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1, interval=10))
    writer.flush()
    registry = CollectorRegistry()
    [t] = _sweep(fleet, writer, registry, 31).run()
    assert (t.terminal_id, t.to_state, t.reason) == ("T-1", "offline", "timeout")
    assert (
        registry.get_sample_value(
            "kioskfleet_terminals_offline_detected_total", {"reason": "timeout"}
        )
        == 1
    )
    writer.flush()
    assert [tr.reason for tr in store.batches[-1].transitions] == ["timeout"]
    assert store.batches[-1].terminals[0].online is False


def test_offline_sweep_does_nothing_while_the_broker_link_is_down() -> None:
    fleet, _, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1, interval=10))
    registry = CollectorRegistry()
    sweep = OfflineSweep(
        fleet, writer, ServerMetrics(registry), listening_since=lambda: None, clock=lambda: at(999)
    )
    assert sweep.run() == []
    assert fleet.get("T-1") is not None
    assert (
        registry.get_sample_value(
            "kioskfleet_terminals_offline_detected_total", {"reason": "timeout"}
        )
        == 0
    )


class _FlushMidApply(FleetState):
    """A fleet whose ``apply`` lets a flush run on another thread right after the state
    changed and before the ingest recorded the change (the race a real flusher can hit)."""

    writer: WriteBehind

    def apply(self, message: Message, received_at: datetime, *, retained: bool = False) -> Outcome:
        outcome = super().apply(message, received_at, retained=retained)
        flusher = threading.Thread(target=self.writer.flush)
        flusher.start()
        flusher.join(0.3)  # done at once without the intake lock; blocked (as it must be) with it
        self.flushers.append(flusher)
        return outcome

    flushers: list[threading.Thread]


def test_a_flush_racing_an_apply_never_commits_a_position_without_its_event_and_ack() -> None:
    fleet = _FlushMidApply()
    fleet.flushers = []
    store = FakeStore()
    acks = Acks()
    writer = WriteBehind(
        store, fleet.snapshot, ServerMetrics(CollectorRegistry()), acknowledge=acks
    )
    fleet.writer = writer
    ingest = Ingest(fleet, writer, ServerMetrics(CollectorRegistry()), max_payload_bytes=65536)
    first = report(seq=1)
    ingest.handle(InboundMessage(topic("T-1", Channel.REPORT), encode(first), False, at(0), mid=4))
    event = peripheral_event("T-1", 2, periph("printer", "receipt_printer", "jam"), "ok")
    ingest.handle(InboundMessage(topic("T-1", Channel.EVENT), encode(event), False, at(1), mid=5))
    for flusher in fleet.flushers:
        flusher.join(10)
    assert writer.flush()
    # The first batch that makes seq 2 durable (a redelivery is then a duplicate) must also
    # hold the event row and its transition, and only then is the delivery acknowledged.
    batch = next(b for b in store.batches if any(v.last_seq == 2 for v in b.terminals))
    assert [e.seq for e in batch.events] == [2]
    assert [t.to_state for t in batch.transitions][-1:] == ["jam"]
    assert acks.sent == [(0, 4), (0, 5)]


class _ExplodingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.explode = True

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        if self.explode:
            raise RuntimeError("an untranslated driver error")
        super().write(batch, now=now)


def test_an_untranslated_store_exception_keeps_the_batch_and_its_acks_for_the_retry() -> None:
    fleet = FleetState()
    store = _ExplodingStore()
    acks = Acks()
    writer = WriteBehind(
        store, fleet.snapshot, ServerMetrics(CollectorRegistry()), acknowledge=acks
    )
    _apply(fleet, writer, report(seq=1), mid=3)
    assert not writer.flush()
    assert "RuntimeError" in (writer.failure or "")
    assert (acks.sent, writer.pending_acks()) == ([], 1)
    store.explode = False
    assert writer.flush()
    [batch] = store.batches
    assert [v.last_seq for v in batch.terminals] == [1]
    assert acks.sent == [(1, 3)]


class _HangingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        self.entered.set()
        assert self.release.wait(10)
        super().write(batch, now=now)


def test_a_write_hanging_past_the_stall_bound_counts_as_a_failure_and_its_end_as_recovery() -> None:
    fleet = FleetState()
    store = _HangingStore()
    mono = [100.0]
    writer = WriteBehind(
        store,
        fleet.snapshot,
        ServerMetrics(CollectorRegistry()),
        stall_after_s=5.0,
        clock=lambda: at(mono[0]),
        monotonic=lambda: mono[0],
    )
    _apply(fleet, writer, report(seq=1))
    flusher = threading.Thread(target=writer.flush)
    flusher.start()
    try:
        assert store.entered.wait(10)
        assert writer.failure is None  # just slow so far
        mono[0] += 6  # the broker holds the terminals' messages back all this time
        assert "not finished" in (writer.failure or "")
    finally:
        store.release.set()
        flusher.join(10)
    assert writer.failure is None
    assert writer.recovered_at == at(106)  # the offline sweep's grace restarts here


# --- end-to-end commit confirmation (kf.committed) ------------------------------------------


class Confirmations:
    def __init__(self) -> None:
        self.sent: list[list[Confirmation]] = []

    def __call__(self, confirmations: Sequence[Confirmation]) -> None:
        self.sent.append(list(confirmations))


def _confirming_rig(
    registry: CollectorRegistry | None = None, owner: _Owns | None = None
) -> tuple[FleetState, FakeStore, WriteBehind, Ingest, Confirmations]:
    """The ingest and writer wired as the server wires them (open gaps in confirmations), on
    a clock 30 s after the messages' receive time ``at(0)``: gaps noticed then are open.
    ``owner``: partitioned, this replica writes the terminals it names."""
    fleet, store = FleetState(), FakeStore()
    confirmations = Confirmations()
    writer = WriteBehind(
        store,
        fleet.snapshot,
        ServerMetrics(CollectorRegistry()),
        acknowledge=ACKS,
        confirm=confirmations,
        open_gaps=fleet.open_gaps,
        writes=None if owner is None else owner.writes,
        interval_s=3600,
        clock=lambda: at(30),
    )
    ACKS.sent.clear()
    metrics = ServerMetrics(registry or CollectorRegistry())
    ingest = Ingest(fleet, writer, metrics, max_payload_bytes=65536, owner=owner)
    return fleet, store, writer, ingest, confirmations


_CHANNELS = {"kf.report": Channel.REPORT, "kf.event": Channel.EVENT, "kf.update": Channel.UPDATE}


def _deliver(ingest: Ingest, message: Message, mid: int) -> None:
    channel = _CHANNELS[message.schema_]
    ingest.handle(
        InboundMessage(topic(message.terminal_id, channel), encode(message), False, at(0), mid=mid)
    )


def test_each_terminal_of_a_committed_batch_gets_one_confirmation_of_its_highest_seq() -> None:
    _, store, writer, ingest, confirmations = _confirming_rig()
    for i in range(1, 6):
        _deliver(ingest, report("T-1", seq=i, sent_at=at(i)), mid=i)
    _deliver(ingest, report("T-2", seq=3), mid=10)
    assert confirmations.sent == []  # nothing before the commit
    assert writer.flush()
    assert len(store.batches) == 1
    first = report("T-1", seq=1)
    assert confirmations.sent == [
        [("T-1", first.boot_id, 5, ()), ("T-2", first.boot_id, 3, ((1, 2),))]
    ]


def test_no_confirmation_is_published_while_the_commit_fails() -> None:
    _, store, writer, ingest, confirmations = _confirming_rig()
    _deliver(ingest, report("T-1", seq=1), mid=1)
    store.fail = True
    assert not writer.flush()
    assert confirmations.sent == []
    store.fail = False
    assert writer.flush()
    assert [c[0][2] for c in confirmations.sent] == [1]


def test_a_resent_message_is_a_harmless_duplicate_that_is_acknowledged_and_confirmed_again() -> (
    None
):
    fleet, store, writer, ingest, confirmations = _confirming_rig()
    for i in range(1, 4):
        _deliver(ingest, report("T-1", seq=i, sent_at=at(i)), mid=i)
    assert writer.flush()
    before = fleet.snapshot(["T-1"])[0]
    # The agent never saw the confirmation (it was offline): it re-sends 1..3.
    for i in range(1, 4):
        _deliver(ingest, report("T-1", seq=i, sent_at=at(i)), mid=10 + i)
    assert writer.flush()
    after = fleet.snapshot(["T-1"])[0]
    assert (after.last_seq, after.reports_received, after.seq_gaps) == (
        before.last_seq,
        before.reports_received,
        before.seq_gaps,
    )
    assert len(store.batches) == 1  # the duplicates wrote nothing
    assert ACKS.sent == [(0, 1), (0, 2), (0, 3), (0, 11), (0, 12), (0, 13)]
    assert [c[0][2] for c in confirmations.sent] == [3, 3]


def test_heartbeats_are_written_as_positions_and_any_other_change_makes_the_row_whole() -> None:
    _, store, writer, ingest, _ = _confirming_rig()
    _deliver(ingest, report("T-1", seq=1), mid=1)
    _deliver(ingest, report("T-2", seq=1), mid=2)
    assert writer.flush()
    assert store.batches[-1].position_only == frozenset()  # first sighting: whole rows
    _deliver(ingest, report("T-1", seq=2, sent_at=at(1)), mid=3)
    _deliver(ingest, report("T-2", seq=2, sent_at=at(1)), mid=4)
    _deliver(ingest, report("T-2", seq=3, sent_at=at(2), hall="Hall B"), mid=5)
    _deliver(ingest, report("T-2", seq=4, sent_at=at(3), hall="Hall B"), mid=6)
    assert writer.flush()
    batch = store.batches[-1]
    assert batch.position_only == frozenset({"T-1"})  # T-2 changed hall in between
    assert {v.id: v.last_seq for v in batch.terminals} == {"T-1": 2, "T-2": 4}


def test_a_failed_flush_keeps_what_needs_a_whole_row_for_the_retry() -> None:
    _, store, writer, ingest, _ = _confirming_rig()
    _deliver(ingest, report("T-1", seq=1), mid=1)
    assert writer.flush()
    _deliver(ingest, report("T-1", seq=2, sent_at=at(1), hall="Hall B"), mid=2)
    store.fail = True
    assert not writer.flush()
    _deliver(ingest, report("T-1", seq=3, sent_at=at(2), hall="Hall B"), mid=3)  # a heartbeat
    store.fail = False
    assert writer.flush()
    assert store.batches[-1].position_only == frozenset()
    assert store.batches[-1].terminals[0].hall == "Hall B"


# --- gap fills: a confirmation lists what the server misses; a late message fills it ----------


def test_a_confirmation_lists_the_open_gaps_and_a_late_message_fills_them() -> None:
    registry = CollectorRegistry()
    fleet, store, writer, ingest, confirmations = _confirming_rig(registry)
    boot = report("T-1", seq=1).boot_id
    for seq in (1, 2, 5, 6):  # 3 and 4 acknowledged by the broker, never delivered
        _deliver(ingest, report("T-1", seq=seq, sent_at=at(seq)), mid=seq)
    assert writer.flush()
    assert confirmations.sent[-1] == [("T-1", boot, 6, ((3, 4),))]
    _deliver(ingest, report("T-1", seq=4, sent_at=at(4)), mid=14)  # the agent re-sends them
    assert writer.flush()
    assert confirmations.sent[-1] == [("T-1", boot, 6, ((3, 3),))]
    _deliver(ingest, report("T-1", seq=3, sent_at=at(3)), mid=13)
    assert writer.flush()
    assert confirmations.sent[-1] == [("T-1", boot, 6, ())]
    v = fleet.snapshot(["T-1"])[0]
    assert (v.last_seq, v.reports_received, v.seq_gaps) == (6, 6, 0)
    assert store.batches[-1].terminals[0].seq_gaps == 0  # the row's count is durable
    assert registry.get_sample_value("kioskfleet_ingest_seq_gaps_total") == 2
    assert registry.get_sample_value("kioskfleet_ingest_gap_fills_total") == 2
    assert ACKS.sent[-2:] == [(0, 14), (0, 13)]


def test_a_filled_event_is_stored_but_changes_no_live_state() -> None:
    fleet, store, writer, ingest, _ = _confirming_rig()
    jam = periph("printer", "receipt_printer", "jam")
    ok = periph("printer", "receipt_printer")
    _deliver(ingest, report("T-1", seq=1, sent_at=at(1)), mid=1)
    _deliver(ingest, peripheral_event("T-1", 3, ok, "jam", sent_at=at(3)), mid=3)
    assert writer.flush()
    before = fleet.snapshot(["T-1"])[0]
    _deliver(ingest, peripheral_event("T-1", 2, jam, "ok", sent_at=at(2)), mid=2)  # the jam
    assert writer.flush()
    after = fleet.snapshot(["T-1"])[0]
    assert [(e.seq, e.body["peripheral"]["condition"]) for e in store.batches[-1].events] == [
        (2, "jam")
    ]
    assert store.batches[-1].transitions == []
    assert after.peripherals == before.peripherals  # still ok: the fill is history
    assert (after.last_sent_at, after.last_seen) == (before.last_sent_at, before.last_seen)
    assert (after.events_received, after.seq_gaps) == (before.events_received + 1, 0)


def test_a_filled_update_status_a_later_one_followed_is_counted_but_not_stored() -> None:
    fleet, store, writer, ingest, _ = _confirming_rig()
    _deliver(ingest, update_status("T-1", 1, "downloading"), mid=1)
    _deliver(ingest, update_status("T-1", 3, "succeeded"), mid=3)
    assert writer.flush()
    _deliver(ingest, update_status("T-1", 2, "installing"), mid=2)
    assert writer.flush()
    assert store.batches[-1].updates == []  # "installing" must not become the latest state
    v = fleet.snapshot(["T-1"])[0]
    assert (v.events_received, v.seq_gaps) == (3, 0)


# --- partitioned ingest (ingest_ownership = "partition"): only the owner writes -----------


class _Owns:
    """The ingest's owner gate: this replica writes the terminals in ``mine``."""

    def __init__(self, *mine: str) -> None:
        self.mine = set(mine)

    def writes(self, terminal_id: str) -> bool:
        return terminal_id in self.mine


def test_a_message_another_replica_owns_is_applied_acknowledged_and_neither_written_nor_confirmed() -> (
    None
):
    registry = CollectorRegistry()
    fleet, store, writer, ingest, confirmations = _confirming_rig(registry, _Owns("T-1"))
    _deliver(ingest, report("T-1", seq=1), mid=1)
    _deliver(ingest, report("T-2", seq=1), mid=2)
    _deliver(ingest, report("T-2", seq=1), mid=3)  # a re-send: a duplicate confirms nothing
    assert writer.flush()
    [batch] = store.batches
    assert [v.id for v in batch.terminals] == ["T-1"]
    assert [t.terminal_id for t in batch.transitions] == ["T-1"]
    assert [c[0] for sent in confirmations.sent for c in sent] == ["T-1"]
    assert ACKS.sent == [(0, 1), (0, 2), (0, 3)]  # every delivery, in receive order
    assert {v.id: v.last_seq for v in fleet.snapshot(["T-1", "T-2"])} == {"T-1": 1, "T-2": 1}
    assert registry.get_sample_value("kioskfleet_ingest_not_owned_total") == 1


def test_a_partitioned_sweep_records_its_own_terminals_and_the_others_in_memory_only() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report("T-1", seq=1, interval=10), report("T-2", seq=1, interval=10))
    writer.flush()
    registry = CollectorRegistry()
    sweep = _sweep(fleet, writer, registry, 40, writes=_Owns("T-2").writes)
    assert [t.terminal_id for t in sweep.run()] == ["T-2"]
    writer.flush()
    assert [t.terminal_id for t in store.batches[-1].transitions] == ["T-2"]
    assert [v.id for v in store.batches[-1].terminals] == ["T-2"]
    assert [v.online for v in fleet.snapshot(["T-1", "T-2"])] == [False, False]  # the whole view
    assert (
        registry.get_sample_value(
            "kioskfleet_terminals_offline_detected_total", {"reason": "timeout"}
        )
        == 1
    )


def test_a_flush_leaves_out_the_pending_writes_of_a_terminal_this_replica_no_longer_owns() -> None:
    """Recorded while owned, flushed after the owner changed (or a retry outlived this
    replica's membership): acknowledged, neither written nor confirmed."""
    owns = _Owns("T-1", "T-2")
    _, store, writer, ingest, confirmations = _confirming_rig(owner=owns)
    _deliver(ingest, report("T-1", seq=1), mid=1)
    _deliver(ingest, report("T-2", seq=1), mid=2)
    owns.mine = {"T-2"}  # T-1 moved to another replica before the flush
    assert writer.flush()
    [batch] = store.batches
    assert [v.id for v in batch.terminals] == ["T-2"]
    assert [c[0] for sent in confirmations.sent for c in sent] == ["T-2"]
    assert ACKS.sent == [(0, 1), (0, 2)]


def test_a_decommission_through_a_replica_that_does_not_own_the_terminal_is_still_written() -> None:
    fleet, store = FleetState(), FakeStore()
    writer = WriteBehind(
        store,
        fleet.snapshot,
        ServerMetrics(CollectorRegistry()),
        writes=_Owns().writes,
        interval_s=3600,
    )
    writer.remove("T-9")
    assert writer.flush()
    assert [batch.removed for batch in store.batches] == [frozenset({"T-9"})]
