"""The analytics rollups on each database: every raw transaction counted exactly once by
the watermark, also by a new store after a restart; the
availability sample adds up; rollups outlive the raw rows and are pruned by their own
retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from server.analytics import hour_start
from server.fleet_state import FleetState
from server.metrics import ServerMetrics
from server.records import UsageRecord, WriteBatch
from server.storage import Storage
from server.usage_rollup import UsageRollupJob
from server.usage_rollup_store import UsageRollupStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC


def _usage(seq: int, minute: int, *, outcome: str = "completed", pages: int = 2) -> UsageRecord:
    return UsageRecord(
        terminal_id="T-1",
        boot_id="boot-0001",
        seq=seq,
        service="tax.invoice.print",
        outcome=outcome,
        cause="printer" if outcome == "failed" else None,
        duration_s=60.0,
        pages=pages,
        occurred_at=T0 + timedelta(minutes=minute),
        received_at=T0 + timedelta(minutes=minute),
    )


def _hall(_terminal_id: str) -> str:
    return "hall-01"


def test_each_raw_row_is_rolled_up_once_also_after_a_restart(storage: Storage) -> None:
    storage.write(WriteBatch(usage=[_usage(1, 5), _usage(2, 30), _usage(3, 70)]), now=T0)
    store = UsageRollupStore(storage)
    assert store.roll_up(_hall, batch=2) == 3  # in two transactions
    assert store.roll_up(_hall) == 0
    storage.write(
        WriteBatch(usage=[_usage(4, 40, outcome="failed", pages=0), _usage(3, 70)]), now=T0
    )  # seq 3 again: stored once, so counted once
    restarted = UsageRollupStore(storage)  # a new server on the same database
    assert restarted.roll_up(_hall) == 1
    rows = {r.hour_start: r for r in restarted.hourly(None, None)}
    assert sorted(rows) == [T0, T0 + timedelta(hours=1)]
    assert dict(rows[T0].counts) == {"completed": 2, "failed_printer": 1}
    assert (rows[T0].busy_s, rows[T0].pages) == (180.0, 4)
    assert dict(rows[T0 + timedelta(hours=1)].counts) == {"completed": 1}
    assert restarted.watermark() == 4


def test_availability_samples_add_up_per_hour_and_rollups_are_pruned_by_their_hour(
    storage: Storage,
) -> None:
    store = UsageRollupStore(storage)
    clock = [T0 + timedelta(minutes=1)]
    offered = {("r", "hall-01", "tax.invoice.print"): 0, ("r", "hall-01", "info.opening_hours"): 2}
    job = UsageRollupJob(
        store,
        FleetState(),
        ServerMetrics(CollectorRegistry()),
        offered=lambda: offered,
        hall_open=lambda hall: hall == "hall-01",
        clock=lambda: clock[0],
        interval_s=60,
    )
    job.run()  # the first tick counts one interval
    clock[0] += timedelta(seconds=60)
    job.run()
    clock[0] += timedelta(hours=5)  # down for hours: at most two intervals count
    job.run()
    found = store.availability(None, None)
    assert found[("hall-01", "tax.invoice.print", T0)] == (120.0, 0.0)
    assert found[("hall-01", "info.opening_hours", T0)] == (120.0, 120.0)
    later = hour_start(clock[0])
    assert found[("hall-01", "info.opening_hours", later)] == (120.0, 120.0)

    storage.write(WriteBatch(usage=[_usage(1, 5)]), now=T0)
    store.roll_up(_hall)
    deleted = store.prune(older_than=timedelta(hours=1), now=later)
    assert deleted == 3  # T0's hourly row and its two availability rows
    assert store.hourly(None, None) == []
    assert set(store.availability(None, None)) == {
        ("hall-01", "tax.invoice.print", later),
        ("hall-01", "info.opening_hours", later),
    }


class _Overtaken(UsageRollupStore):
    """A store that another server overtakes mid-rollup: between its read of the watermark
    and its move, the other one rolls the same rows up and commits."""

    def __init__(self, storage: Storage, other: UsageRollupStore) -> None:
        super().__init__(storage)
        self._other = other
        self.overtaken = 0

    def _add_hourly(self, conn: Any, insert: Any, rows: Any) -> None:
        if not self.overtaken:
            self.overtaken = self._other.roll_up(_hall)
        super()._add_hourly(conn, insert, rows)


def test_a_server_overtaken_mid_rollup_rolls_back_so_rows_count_once(postgres_url: str) -> None:
    """On PostgreSQL (two servers share one there); the first rollup ever and a later one."""
    storage = Storage(postgres_url)
    storage.open()
    try:
        storage.write(WriteBatch(usage=[_usage(1, 5), _usage(2, 30)]), now=T0)
        other = UsageRollupStore(storage)
        slow = _Overtaken(storage, other)
        assert slow.roll_up(_hall) == 0  # its transaction found the watermark moved
        assert slow.overtaken == 2
        (row,) = other.hourly(None, None)
        assert dict(row.counts) == {"completed": 2}  # counted once, by the other server
        assert other.watermark() == 2
        storage.write(WriteBatch(usage=[_usage(3, 40)]), now=T0)  # and once the watermark exists
        slow.overtaken = 0
        assert slow.roll_up(_hall) == 0
        assert slow.overtaken == 1
        (row,) = other.hourly(None, None)
        assert dict(row.counts) == {"completed": 3}
        assert other.watermark() == 3
    finally:
        storage.close()
