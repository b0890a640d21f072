"""The job lease's fence without a database: which code runs under it (one run, one thread),
what a refused re-check reports and raises, and that the batched writer keeps the offline
sweep's fence beside its transitions (and only theirs) up to the batch it hands the store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from server.errors import FencedOffError, StorageError
from server.fleet_views import CONNECTIVITY, TerminalView, Transition
from server.lease_fence import Fence, current_fence, fencing
from server.metrics import ServerMetrics
from server.records import WriteBatch
from server.write_behind import WriteBehind

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _fence(row_token: int | None = 3, refusals: list[str] | None = None) -> Fence:
    def refused(_fence: Fence, operation: str) -> None:
        if refusals is not None:
            refusals.append(operation)

    def still_at(_conn: object) -> bool:
        return row_token == 3

    return Fence("scheduled-jobs", 3, "offline-sweep", still_at, refused, lambda: row_token)


def test_the_fence_is_current_only_inside_its_run_and_its_thread() -> None:
    fence = _fence()
    seen_elsewhere: list[Fence | None] = []
    assert current_fence() is None
    with fencing(fence):
        assert current_fence() is fence
        other = threading.Thread(target=lambda: seen_elsewhere.append(current_fence()))
        other.start()
        other.join()
    assert current_fence() is None
    assert seen_elsewhere == [None]  # another thread (the ingest, an API request): no fence


def test_the_fence_is_reset_when_the_run_raises() -> None:
    with pytest.raises(RuntimeError), fencing(_fence()):
        raise RuntimeError("the job failed")
    assert current_fence() is None


def test_a_recheck_against_a_moved_token_reports_and_raises_a_storage_error() -> None:
    refusals: list[str] = []
    _fence(row_token=3, refusals=refusals).recheck("re-sign TUF metadata")  # still held
    assert refusals == []
    with pytest.raises(FencedOffError) as raised:
        _fence(row_token=4, refusals=refusals).recheck("re-sign TUF metadata")
    assert isinstance(raised.value, StorageError)  # the jobs' StorageError handling applies
    assert (raised.value.lease, raised.value.token) == ("scheduled-jobs", 3)
    assert refusals == ["re-sign TUF metadata"]


def test_a_fence_is_equal_by_lease_token_and_job_so_a_batch_groups_by_it() -> None:
    assert _fence(row_token=3) == _fence(row_token=9)
    assert len({_fence(), _fence()}) == 1


class _Store:
    def __init__(self) -> None:
        self.batches: list[WriteBatch] = []

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        self.batches.append(batch)


def _offline(terminal_id: str) -> Transition:
    return Transition(terminal_id, CONNECTIVITY, CONNECTIVITY, "online", "offline", NOW, NOW)


def test_the_writer_keeps_the_sweeps_fence_beside_its_transitions_only() -> None:
    store = _Store()
    writer = WriteBehind(
        store, lambda _ids: list[TerminalView](), ServerMetrics(CollectorRegistry())
    )
    fence = _fence()
    with fencing(fence):  # the offline sweep's run
        writer.record("SWEPT", transitions=(_offline("SWEPT"),))
    writer.record("INGESTED", transitions=(_offline("INGESTED"),))
    assert writer.pending() == (2, 2)
    assert writer.flush()
    (batch,) = store.batches
    assert [t.terminal_id for t in batch.transitions] == ["INGESTED"]
    assert batch.fenced_transitions == [(fence, _offline("SWEPT"))]
    assert batch.row_count() == 2
