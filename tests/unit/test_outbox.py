"""The durable outbox on its own: quota, order, persistence, corrupt files, SQLite errors."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from agent.outbox import Outbox, OutboxError
from protocol.topics import Channel

T = "T-0001"


def fill(outbox: Outbox, channels: str, *, terminal: str = T, start: int = 1) -> list[int | None]:
    """Append one message per letter: r = report, e = event, u = update. Returns the row ids."""
    kinds = {"r": Channel.REPORT, "e": Channel.EVENT, "u": Channel.UPDATE}
    ids = []
    for n, letter in enumerate(channels, start=start):
        channel = kinds[letter]
        result = outbox.append(terminal, channel, n, f"kf/v1/terminals/{terminal}/{channel}", b"x")
        ids.append(result.id)
    return ids


def test_a_new_stream_gets_a_random_boot_id_the_envelope_accepts_and_starts_at_seq_0() -> None:
    outbox = Outbox.in_memory()
    first = outbox.stream(T)
    assert first.last_seq == 0
    assert first.pending == 0
    assert 8 <= len(first.boot_id) <= 64
    assert set(first.boot_id) <= set("0123456789abcdef-")
    assert outbox.stream(T) == first  # existing: the same stream
    assert outbox.stream("T-0002").boot_id != first.boot_id


def test_rows_come_back_oldest_first_after_a_given_id() -> None:
    outbox = Outbox.in_memory()
    ids = fill(outbox, "rerer")
    fill(outbox, "rr", terminal="T-0002")
    items = outbox.peek(T, 0, 10)
    assert [i.id for i in items] == ids
    assert [i.seq for i in items] == [1, 2, 3, 4, 5]
    assert [i.channel for i in items][:2] == [Channel.REPORT, Channel.EVENT]
    assert [i.id for i in outbox.peek(T, ids[1] or 0, 2)] == ids[2:4]
    assert outbox.peek(T, 0, 0) == []


def test_removing_rows_updates_pending_and_ignores_rows_already_gone() -> None:
    outbox = Outbox.in_memory()
    ids = [i for i in fill(outbox, "rre") if i is not None]
    outbox.remove(T, ids[:2])
    outbox.remove(T, ids[:2])  # a second PUBACK for the same rows: nothing happens
    outbox.remove("T-0002", ids[2:])  # another terminal cannot remove our rows
    stats = outbox.stats(T)
    assert stats.pending == 1
    assert stats.pending_bytes == 1
    assert (stats.reports, stats.events, stats.last_seq) == (2, 1, 3)


def test_the_quota_drops_the_oldest_reports_first_and_counts_them() -> None:
    outbox = Outbox.in_memory(max_messages=4)
    fill(outbox, "rerer")  # 5 > 4: report seq 1 goes
    result = outbox.append(T, Channel.REPORT, 6, "kf/v1/terminals/T-0001/report", b"x")
    assert result.id is not None
    assert len(result.dropped_ids) == 1  # report seq 3 goes
    stats = outbox.stats(T)
    assert (stats.pending, stats.dropped_reports, stats.reports, stats.events) == (4, 2, 4, 2)
    assert [(i.channel.value, i.seq) for i in outbox.peek(T, 0, 10)] == [
        ("event", 2),
        ("event", 4),
        ("report", 5),
        ("report", 6),
    ]


def test_the_byte_quota_drops_reports_too() -> None:
    outbox = Outbox.in_memory(max_bytes=2500)
    for seq in range(1, 4):
        outbox.append(T, Channel.REPORT, seq, "kf/v1/terminals/T-0001/report", b"r" * 1000)
    stats = outbox.stats(T)
    assert (stats.pending, stats.pending_bytes, stats.dropped_reports) == (2, 2000, 1)
    assert [i.seq for i in outbox.peek(T, 0, 10)] == [2, 3]


def test_events_and_updates_are_never_dropped_they_go_over_the_quota_and_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = Outbox.in_memory(max_messages=3)
    ids = fill(outbox, "eueee")
    stats = outbox.stats(T)
    assert stats.pending == 5
    assert stats.dropped_reports == 0
    assert stats.over_quota == 2
    assert all(i is not None for i in ids)
    assert sum("over its quota" in r.getMessage() for r in caplog.records) == 1  # rate-limited
    # A report now is the oldest report left: it is dropped at once, and counted.
    result = outbox.append(T, Channel.REPORT, 6, "kf/v1/terminals/T-0001/report", b"x")
    assert result.id is None
    assert outbox.stats(T).dropped_reports == 1
    assert [i.seq for i in outbox.peek(T, 0, 10)] == [1, 2, 3, 4, 5]


def test_rows_already_handed_to_the_connection_are_never_dropped_for_the_quota() -> None:
    outbox = Outbox.in_memory(max_messages=3)
    ids = fill(outbox, "rrr")
    handed = ids[1] or 0  # reports 1 and 2 are in flight
    result = outbox.append(
        T, Channel.REPORT, 4, "kf/v1/terminals/T-0001/report", b"x", handed_through=handed
    )
    assert result.dropped_ids == (ids[2],)  # the oldest report not in flight
    assert [i.seq for i in outbox.peek(T, 0, 10)] == [1, 2, 4]


def test_state_messages_are_refused_they_never_go_through_the_outbox() -> None:
    outbox = Outbox.in_memory()
    with pytest.raises(ValueError, match="state"):
        outbox.append(T, Channel.STATE, 1, "kf/v1/terminals/T-0001/state", b"x")


def test_the_stream_and_its_rows_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "outbox.sqlite"  # the directory is created
    with Outbox(path) as outbox:
        boot_id = outbox.stream(T).boot_id
        ids = fill(outbox, "rer")
        outbox.remove(T, [ids[0] or 0])
    with Outbox(path, synchronous="normal") as again:
        stats = again.stats(T)
        assert (stats.boot_id, stats.last_seq, stats.pending) == (boot_id, 3, 2)
        assert [i.seq for i in again.peek(T, 0, 10)] == [2, 3]
        assert again.stream(T).boot_id == boot_id


def test_a_second_handle_on_the_same_file_reads_the_stats_while_the_first_writes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    writer = Outbox(path, synchronous="normal")
    reader = Outbox(path)
    try:
        fill(writer, "rrer")
        assert reader.stats(T).pending == 4
        assert reader.terminals() == [T]
        with pytest.raises(KeyError):
            reader.stats("T-unknown")
    finally:
        writer.close()
        reader.close()


def test_a_corrupt_file_is_moved_aside_and_a_new_stream_begins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        old_boot = outbox.stream(T).boot_id
    path.write_bytes(b"this is not a database at all" * 200)
    with caplog.at_level(logging.ERROR), Outbox(path) as outbox:
        assert outbox.stream(T).boot_id != old_boot
        assert outbox.stats(T).pending == 0
    (aside,) = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and "-wal" not in p.name]
    assert aside.read_bytes().startswith(b"this is not a database")
    assert any("not a valid outbox" in r.getMessage() for r in caplog.records)


def test_a_damaged_page_behind_an_intact_schema_is_found_at_open_and_moved_aside(
    tmp_path: Path,
) -> None:
    # Before the fix the file opened fine and every later stream()/append() of
    # the damaged table raised OutboxError: the agent could never start again.
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        for n in range(300):  # enough streams for the table to span pages
            outbox.stream(f"T-{n:04d}")
        old_boot = outbox.stream(T).boot_id
    db = sqlite3.connect(path)
    (root,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'outbox_stream'"
    ).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)  # the schema on page 1 stays intact
    with Outbox(path) as outbox:
        stream = outbox.stream(T)
        assert stream.boot_id != old_boot
        assert stream.last_seq == 0
        outbox.append(T, Channel.REPORT, 1, f"kf/v1/terminals/{T}/report", b"x")
        assert outbox.stats(T).pending == 1
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())


def test_a_database_with_another_schema_is_moved_aside_too(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE something_else (x INTEGER)")
    db.commit()
    db.close()
    with Outbox(path) as outbox:
        assert outbox.stream(T).last_seq == 0
    assert any(".corrupt-" in p.name for p in tmp_path.iterdir())


def test_an_unusable_path_is_an_outbox_error_naming_the_operation(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutboxError) as info:
        Outbox(blocker / "outbox.sqlite")  # its directory would have to be inside a file
    assert info.value.operation == "open"


def test_a_full_disk_is_an_outbox_error_and_the_failed_append_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    try:
        fill(outbox, "rr")
        before = outbox.stats(T)
        pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
        outbox._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
        with pytest.raises(OutboxError) as info:
            outbox.append(T, Channel.EVENT, 3, "kf/v1/terminals/T-0001/event", b"e" * 50_000)
        assert info.value.operation == "append"
        assert isinstance(info.value.cause, sqlite3.Error)
        assert outbox.stats(T) == before  # rolled back: no row, no count, no seq
        assert [i.seq for i in outbox.peek(T, 0, 10)] == [1, 2]
    finally:
        outbox.close()


def test_a_closed_outbox_raises_outbox_error() -> None:
    outbox = Outbox.in_memory()
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.stream(T)


def test_a_row_handed_by_a_previous_process_is_never_dropped_for_the_quota(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=3) as first:
        ids = fill(first, "rrr")
        first.mark_handed(T, ids[0] or 0)  # then the process dies before the PUBACK
    with Outbox(
        path, max_messages=3
    ) as second:  # handed_through not passed: the stored mark counts
        result = second.append(T, Channel.REPORT, 4, "kf/v1/terminals/T-0001/report", b"x")
        assert result.dropped_ids == (ids[1],)
        assert [i.seq for i in second.peek(T, 0, 10)] == [1, 3, 4]
