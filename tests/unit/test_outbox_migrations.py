"""The outbox survives an agent upgrade: older files are migrated, never moved aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import agent.outbox
from agent.outbox import SCHEMA_VERSION, Outbox, OutboxError
from protocol.topics import Channel
from tests.support.fleet_messages import peripheral_event, report
from tests.support.outbox_v1 import V1Row, write_v1_outbox

T = "T-UPGRADE"
BOOT = "5d0c6f51-3f55-4c64-9d0e-0d6f2a3c9a11"


def _backlog() -> list[V1Row]:
    rows = [V1Row.of(report(T, seq, boot=BOOT)) for seq in (41, 42)]
    rows.append(V1Row.of(peripheral_event(T, 43, {"name": "p", "kind": "receipt_printer",
                                                  "condition": "paper_out"}, "ok", boot=BOOT)))  # fmt: skip
    rows.append(V1Row.of(report(T, 44, boot=BOOT)))
    return rows


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def _columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


def test_a_schema_1_file_keeps_its_stream_and_its_backlog(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    backlog = _backlog()
    write_v1_outbox(path, T, BOOT, backlog, delivered={"report": 37, "event": 3}, dropped_reports=2)

    with Outbox(path) as outbox:
        stats = outbox.stats(T)
        items = outbox.peek(T, 0, 100)
        # the stream goes on where the old agent stopped
        outbox.append(T, Channel.REPORT, 45, f"kf/v1/terminals/{T}/report", b"{}")
        after = outbox.stats(T)

    assert (stats.boot_id, stats.last_seq) == (BOOT, 44)
    assert (stats.reports, stats.events, stats.updates) == (37 + 3, 3 + 1, 0)
    assert (stats.pending, stats.dropped_reports) == (4, 2)
    assert stats.pending_bytes == sum(len(r.payload) for r in backlog)
    assert [(i.channel.value, i.seq, i.topic, i.payload) for i in items] == [
        (r.channel, r.seq, r.topic, r.payload) for r in backlog
    ]
    assert (after.boot_id, after.last_seq, after.reports, after.pending) == (BOOT, 45, 41, 5)
    assert _user_version(path) == SCHEMA_VERSION
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_a_migrated_file_has_exactly_the_schema_a_new_file_gets(tmp_path: Path) -> None:
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    write_v1_outbox(old, T, BOOT, _backlog())
    Outbox(old).close()
    Outbox(new).close()

    def shape(path: Path) -> dict[str, list[tuple[object, ...]]]:
        db = sqlite3.connect(path)
        try:
            names = [r[0] for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")]
            return {n: db.execute(f"PRAGMA table_xinfo({n})").fetchall() for n in names} | {
                "indexes": db.execute(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' ORDER BY 1"
                ).fetchall()
            }
        finally:
            db.close()

    assert shape(old) == shape(new)


def test_a_migration_that_fails_half_way_leaves_the_file_as_the_old_agent_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.sqlite"
    write_v1_outbox(path, T, BOOT, _backlog())
    real_step = agent.outbox._MIGRATIONS[1]

    def step_then_disk_error(db: sqlite3.Connection) -> None:
        real_step(db)  # the tables are already rebuilt when the disk fails
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(agent.outbox._MIGRATIONS, 1, step_then_disk_error)
    with pytest.raises(OutboxError) as info:
        Outbox(path)
    assert info.value.operation == "migrate"
    assert _user_version(path) == 1
    assert "reports" in _columns(path, "outbox_stream")
    assert _columns(path, "outbox_count") == []
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]

    monkeypatch.setitem(agent.outbox._MIGRATIONS, 1, real_step)  # the disk is back
    with Outbox(path) as outbox:
        assert (outbox.stats(T).boot_id, outbox.stats(T).pending) == (BOOT, 4)


def test_a_file_from_a_newer_agent_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()

    with pytest.raises(OutboxError, match="newer agent") as info:
        Outbox(path)
    assert info.value.operation == "open"
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]


def test_every_older_version_has_a_migration_step() -> None:
    assert sorted(agent.outbox._MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_a_new_channel_needs_no_new_column(tmp_path: Path) -> None:
    """Counts are rows per channel: a channel the stream has not used yet is simply absent."""
    with Outbox(tmp_path / "outbox.sqlite") as outbox:
        outbox.append(T, Channel.UPDATE, 1, f"kf/v1/terminals/{T}/update", b"{}")
        assert dict(outbox.stats(T).generated) == {Channel.UPDATE: 1}
