"""What the ingest queues reaches the database in batches; failures are retried, bounded."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from server.errors import StorageError
from server.fleet_state import FleetState
from server.metrics import ServerMetrics
from server.scheduler import OfflineSweep
from server.storage import WriteBatch
from server.write_behind import WriteBehind
from tests.unit.test_fleet_state import at, periph, report


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[WriteBatch] = []
        self.fail = False

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        if self.fail:
            raise StorageError("write batch", "database is locked")
        self.batches.append(batch)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MONOTONIC = FakeMonotonic()


def _rig(max_pending: int = 1000) -> tuple[FleetState, FakeStore, WriteBehind, CollectorRegistry]:
    fleet = FleetState()
    store = FakeStore()
    registry = CollectorRegistry()
    writer = WriteBehind(
        store,
        fleet.snapshot,
        ServerMetrics(registry),
        interval_s=3600,
        heartbeat_interval_s=30,
        max_pending_transitions=max_pending,
        clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
        monotonic=MONOTONIC,
    )
    return fleet, store, writer, registry


def _apply(fleet: FleetState, writer: WriteBehind, *messages: object) -> None:
    for i, m in enumerate(messages):
        out = fleet.apply(m, at(i))  # type: ignore[arg-type]
        writer.record(
            m.terminal_id,  # type: ignore[attr-defined]
            peripherals_changed=out.peripherals_changed,
            transitions=out.transitions,
            heartbeat_only=out.heartbeat_only,
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


def test_heartbeat_only_changes_wait_for_the_heartbeat_interval_then_write_the_latest() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1))
    writer.flush()
    _apply(fleet, writer, report(seq=2), report(seq=3))
    writer.flush()
    assert len(store.batches) == 1  # nothing due yet
    assert writer.pending() == (1, 0)
    MONOTONIC.now += 31
    writer.flush()
    second = store.batches[1]
    assert [(v.id, v.last_seq) for v in second.terminals] == [("T-1", 3)]
    assert second.peripheral_ids == frozenset()
    assert second.transitions == []


def test_stop_writes_deferred_heartbeats() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1))
    writer.flush()
    _apply(fleet, writer, report(seq=2))
    assert writer.stop()
    assert store.batches[-1].terminals[0].last_seq == 2


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
        _apply(fleet, writer, report(seq=i, peripherals=[periph("printer", "receipt_printer", c)]))
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


def test_offline_sweep_records_timeouts_and_counts_them() -> None:
    fleet, store, writer, _ = _rig()
    _apply(fleet, writer, report(seq=1, interval=10))
    writer.flush()
    registry = CollectorRegistry()
    sweep = OfflineSweep(
        fleet,
        writer,
        ServerMetrics(registry),
        listening_since=lambda: at(0),
        clock=lambda: at(31),
    )
    [t] = sweep.run()
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
