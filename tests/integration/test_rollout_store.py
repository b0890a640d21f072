"""The rollout and directive_seq tables on SQLite and PostgreSQL: a rollout's definition and
planner state survive a round trip, directive seqs always grow, finished rollouts are pruned
by age and active ones never."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from server.rollout_planner import (
    MANUAL,
    AbortThreshold,
    Delay,
    Phase,
    RolloutDefinition,
    RolloutStatus,
    TerminalProgress,
    TerminalState,
    new_rollout,
)
from server.rollout_store import RolloutStore
from server.storage import Storage, server_metadata

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(storage: Storage) -> RolloutStore:
    return RolloutStore(storage)


def definition(rollout_id: str = "r1") -> RolloutDefinition:
    return RolloutDefinition(
        rollout_id=rollout_id,
        target="kiosk-agent/1.2.0.tar.gz",
        created_by="alice",
        phases=(Phase(1, "count"), Phase(50, "percent", MANUAL), Phase(100, gate=Delay(30.0))),
        success_threshold=0.9,
        abort=AbortThreshold(failure_ratio=0.2, min_decided=2),
        terminal_timeout_s=600.0,
    )


def test_a_rollout_and_its_planner_state_survive_the_database(store: RolloutStore) -> None:
    rollout = new_rollout(definition())
    store.insert(rollout, {"hall": "h1"}, now=NOW)
    running = replace(
        rollout,
        status=RolloutStatus.RUNNING,
        approved_by="bob",
        gate_opens_at=NOW + timedelta(seconds=5),
        terminals=(
            TerminalProgress("t1", TerminalState.NOTIFIED, 0, 1, 0, NOW, None),
            TerminalProgress("t2"),
        ),
    )
    store.save(running, wake_at=NOW + timedelta(minutes=10), now=NOW)
    stored = store.get("r1")
    assert stored is not None
    assert stored.rollout == running
    assert stored.selector == {"hall": "h1"}
    assert stored.wake_at == NOW + timedelta(minutes=10)
    assert stored.finished_at is None
    assert [s.rollout.definition.rollout_id for s in store.list(unsettled_only=True)] == ["r1"]
    assert store.get("missing") is None


def test_a_save_stepped_from_a_row_another_replica_saved_since_is_refused(
    store: RolloutStore,
) -> None:
    rollout = new_rollout(definition())
    store.insert(rollout, {}, now=NOW)
    read = store.get("r1")
    assert read is not None
    approved = replace(rollout, status=RolloutStatus.RUNNING, approved_by="bob")
    later = NOW + timedelta(seconds=1)
    assert store.save(approved, wake_at=None, now=later, read_at=read.updated_at)
    canceled = replace(rollout, status=RolloutStatus.CANCELED)  # stepped from the old read
    assert not store.save(canceled, wake_at=None, now=later, read_at=read.updated_at)
    stored = store.get("r1")
    assert stored is not None
    assert (stored.rollout, stored.finished_at) == (approved, None)  # the first save stands


def test_directive_seqs_always_grow_per_terminal(store: RolloutStore) -> None:
    assert [store.next_directive_seq("t1") for _ in range(3)] == [1, 2, 3]
    assert store.next_directive_seq("t2") == 1
    assert store.next_directive_seq("t1") == 4


def test_finished_rollouts_are_pruned_after_the_retention_active_ones_never(
    store: RolloutStore,
) -> None:
    for rid in ("done", "active"):
        store.insert(new_rollout(definition(rid)), {}, now=NOW)
    done = store.get("done")
    assert done is not None
    store.save(replace(done.rollout, status=RolloutStatus.CANCELED), wake_at=None, now=NOW)
    later = NOW + timedelta(days=10)
    assert store.prune_finished(older_than=timedelta(days=30), now=later) == 0
    assert store.prune_finished(older_than=timedelta(days=5), now=later) == 1
    assert store.get("done") is None
    assert store.get("active") is not None
    assert store.list(unsettled_only=True)[0].rollout.definition.rollout_id == "active"


def test_a_directive_seq_goes_once_its_terminal_is_in_neither_the_fleet_nor_the_registry(
    storage: Storage, store: RolloutStore
) -> None:
    tables = server_metadata().tables
    with storage.engine.begin() as conn:
        conn.execute(
            sa.insert(tables["terminal"]),
            {"id": "in-fleet", "online": True, "online_since": NOW, "last_seen": NOW,
             "first_seen": NOW, "updated_at": NOW, "software": {}},
        )  # fmt: skip
        conn.execute(
            sa.insert(tables["terminal_registry"]),
            {"terminal_id": "tombstone", "hall": "h", "region": "r", "model": "m",
             "status": "decommissioned", "created_at": NOW, "updated_at": NOW},
        )  # fmt: skip
    for terminal_id in ("in-fleet", "tombstone", "gone", "gone"):
        store.next_directive_seq(terminal_id)

    assert store.prune_orphaned_seqs(older_than=timedelta(0), now=NOW) == 1
    assert store.next_directive_seq("in-fleet") == 2  # kept: still counting up
    assert store.next_directive_seq("tombstone") == 2  # kept while its tombstone is
    assert store.next_directive_seq("gone") == 1  # a new seq stream for an id never seen
    with storage.engine.begin() as conn:
        conn.execute(sa.delete(tables["terminal_registry"]))
    assert store.prune_orphaned_seqs(older_than=timedelta(0), now=NOW) == 2  # tombstone, gone
