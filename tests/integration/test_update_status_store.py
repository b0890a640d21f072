"""The update_status table on SQLite and PostgreSQL: written with a batch, stored once,
read as a timeline and per rollout, pruned by age."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.records import UpdateRecord, WriteBatch
from server.storage import Storage
from server.update_status_store import latest_states, rollout_terminals, timeline
from tests.integration.test_storage import at

pytestmark = pytest.mark.integration


def status(
    tid: str,
    seq: int,
    state: str,
    *,
    rollout: str | None = "R-1",
    when: float | None = None,
    reason: str | None = None,
    detail: str | None = None,
) -> UpdateRecord:
    return UpdateRecord(
        terminal_id=tid,
        boot_id="boot-aaaa",
        seq=seq,
        rollout_id=rollout,
        directive_seq=3,
        state=state,
        reason=reason,
        detail=detail,
        occurred_at=at(seq if when is None else when),
        received_at=at(seq if when is None else when),
    )


def test_statuses_are_stored_once_and_read_newest_first(storage: Storage) -> None:
    first = status("T-1", 1, "downloading")
    storage.write(
        WriteBatch(
            updates=[first, status("T-1", 2, "failed", reason="install_failed", detail="exit 3")]
        ),
        now=at(3),
    )
    storage.write(WriteBatch(updates=[first]), now=at(4))  # a replay after a restart
    records = timeline(storage.engine, "T-1", 10)
    assert [(r.seq, r.state, r.reason, r.detail) for r in records] == [
        (2, "failed", "install_failed", "exit 3"),
        (1, "downloading", None, None),
    ]
    assert records[1] == first  # times come back aware UTC, every field as written
    assert [r.seq for r in timeline(storage.engine, "T-1", 1)] == [2]


def test_a_rollout_lists_each_terminals_latest_state_with_counts_and_a_cursor(
    storage: Storage,
) -> None:
    storage.write(
        WriteBatch(
            updates=[
                status("T-1", 1, "downloading"),
                status("T-1", 2, "succeeded"),
                status("T-2", 1, "rolled_back", reason="health_check_failed"),
                status("T-3", 1, "installing"),
                status("T-3", 2, "pending", rollout="R-2"),  # another rollout
                status("T-4", 1, "rejected", rollout=None, reason="bad_signature"),
            ]
        ),
        now=at(5),
    )
    page = rollout_terminals(storage.engine, "R-1", 2)
    assert page.counts == {"succeeded": 1, "rolled_back": 1, "installing": 1}
    assert [(r.terminal_id, r.state) for r in page.terminals] == [
        ("T-1", "succeeded"),
        ("T-2", "rolled_back"),
    ]
    assert page.next_after == "T-2"
    rest = rollout_terminals(storage.engine, "R-1", 2, after=page.next_after)
    assert [(r.terminal_id, r.state) for r in rest.terminals] == [("T-3", "installing")]
    assert rest.next_after is None
    assert latest_states(storage.engine) == {
        "T-1": "succeeded",
        "T-2": "rolled_back",
        "T-3": "pending",
        "T-4": "rejected",
    }


def test_statuses_older_than_the_retention_are_pruned_in_chunks(storage: Storage) -> None:
    storage.write(
        WriteBatch(
            updates=[status("T-1", seq, "downloading", when=seq * 10) for seq in range(1, 11)]
        ),
        now=at(200),
    )
    deleted = storage.prune_update_statuses(older_than=timedelta(seconds=50), now=at(110), chunk=3)
    assert deleted == 5  # received at 10..50 s: older than 60 s
    assert [r.seq for r in timeline(storage.engine, "T-1", 100)] == [10, 9, 8, 7, 6]
