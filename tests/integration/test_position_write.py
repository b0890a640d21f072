"""The batch's position write at the driver level (``server.position_write``), on SQLite
and PostgreSQL: what the ORM statement it replaced did, chunk by chunk."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from server.fleet_views import TerminalView
from server.position_write import update_positions
from server.records import WriteBatch
from server.storage import _TERMINAL, Storage
from tests.integration.test_storage import at, terminal

pytestmark = pytest.mark.integration


def _positions(storage: Storage, views: Sequence[TerminalView], now: datetime, chunk: int) -> int:
    with storage.engine.begin() as conn:
        return update_positions(conn, _TERMINAL, views, now, chunk=chunk)


def test_every_chunk_moves_its_rows_and_the_count_is_the_rows_moved(storage: Storage) -> None:
    ids = [f"T-{i}" for i in range(7)]
    storage.write(WriteBatch(terminals=[terminal(tid) for tid in ids]), now=at(6))
    moved = [
        terminal(tid, last_seq=50 + i, last_seen=at(20 + i), reports_received=i, events_received=2)
        for i, tid in enumerate(ids)
    ]
    assert _positions(storage, moved, at(30), chunk=3) == 7  # chunks of 3, 3 and 1
    loaded = {v.id: v for v in storage.load_fleet()}
    for i, tid in enumerate(ids):
        row = loaded[tid]
        assert (row.last_seq, row.last_seen, row.reports_received, row.events_received) == (
            50 + i,
            at(20 + i),
            i,
            2,
        )
        assert row.last_sent_at == at(4)


def test_a_row_of_another_stream_or_further_along_is_not_moved_nor_counted(
    storage: Storage,
) -> None:
    storage.write(
        WriteBatch(terminals=[terminal("T-1"), terminal("T-2", last_seq=90), terminal("T-3")]),
        now=at(6),
    )
    views = [
        terminal("T-1", last_seq=60, last_seen=at(9)),
        terminal("T-2", last_seq=60, last_seen=at(9)),  # the row is at 90 already
        terminal("T-3", boot_id="boot-bbbb", last_seq=60, last_seen=at(9)),  # another stream
        terminal("T-4", last_seq=60),  # no row at all
    ]
    assert _positions(storage, views, at(10), chunk=2) == 1
    loaded = {v.id: v for v in storage.load_fleet()}
    assert (loaded["T-1"].last_seq, loaded["T-1"].last_seen) == (60, at(9))
    assert (loaded["T-2"].last_seq, loaded["T-2"].last_seen) == (90, at(5))
    assert (loaded["T-3"].last_seq, loaded["T-3"].boot_id) == (42, "boot-aaaa")
    assert "T-4" not in loaded


def test_times_in_another_offset_and_a_missing_send_time_are_stored_as_the_same_instant(
    storage: Storage,
) -> None:
    storage.write(WriteBatch(terminals=[terminal("T-1"), terminal("T-2")]), now=at(6))
    beijing = timezone(timedelta(hours=8))
    seen = at(11).astimezone(beijing)
    views = [
        terminal("T-1", last_seq=43, last_seen=seen, last_sent_at=None),
        terminal("T-2", last_seq=43, last_seen=at(12)),
    ]
    assert _positions(storage, views, at(13), chunk=500) == 2
    loaded = {v.id: v for v in storage.load_fleet()}
    assert loaded["T-1"].last_seen == at(11)
    assert loaded["T-1"].last_seen.tzinfo is UTC
    assert loaded["T-1"].last_sent_at is None
    # Text on SQLite: the database must order the stored values as the instants (T-1's
    # +08:00 time is 08:00:11 UTC, before T-2's 08:00:12), not as the written offsets.
    with storage.engine.connect() as conn:
        order = conn.execute(sa.select(_TERMINAL.c.id).order_by(_TERMINAL.c.last_seen)).all()
    assert [tid for (tid,) in order] == ["T-1", "T-2"]
