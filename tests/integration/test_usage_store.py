"""The ``usage_event`` table on each database: a transaction stored once (also when the
writer sees it again), raw rows pruned after the retention."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.records import UsageRecord, WriteBatch
from server.storage import Storage
from server.usage_store import usage_events
from tests.support.fleet_messages import at

pytestmark = pytest.mark.integration


def _usage(seq: int, *, received: float) -> UsageRecord:
    return UsageRecord(
        terminal_id="T-1",
        boot_id="boot-0001",
        seq=seq,
        service="tax.invoice.print",
        outcome="failed",
        cause="printer",
        duration_s=12.5,
        pages=0,
        occurred_at=at(received),
        received_at=at(received),
    )


def test_a_transaction_written_twice_is_stored_once_with_its_fields(storage: Storage) -> None:
    storage.write(WriteBatch(usage=[_usage(1, received=10)]), now=at(20))
    storage.write(WriteBatch(usage=[_usage(1, received=10), _usage(2, received=11)]), now=at(21))
    rows = usage_events(storage.engine, "T-1", 10)
    assert [r.seq for r in rows] == [2, 1]
    assert rows[1] == _usage(1, received=10)


def test_raw_transactions_older_than_the_retention_are_pruned_in_chunks(storage: Storage) -> None:
    storage.write(
        WriteBatch(usage=[_usage(seq, received=seq * 10) for seq in range(1, 11)]), now=at(200)
    )
    deleted = storage.prune_usage_events(older_than=timedelta(seconds=50), now=at(110), chunk=3)
    assert deleted == 5  # received at 10..50 s: older than 60 s
    assert [r.seq for r in usage_events(storage.engine, "T-1", 100)] == [10, 9, 8, 7, 6]
