"""The storage adapter on SQLite and PostgreSQL: batches, upserts, reload, history, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from protocol.messages import PeripheralCondition, PeripheralKind
from server.errors import ConfigError, StorageDataError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import OfflineReason, PeripheralView, TerminalView, Transition, Verdict
from server.records import EventRecord, WriteBatch
from server.storage import Storage
from server.stream_gaps import Gap
from tests.support.fleet_messages import periph, peripheral_event, report, state

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    s = Storage(database_url, sqlite_busy_timeout_s=0.5)
    s.open()
    yield s
    s.close()


def terminal(tid: str = "T-1", **over: object) -> TerminalView:
    values: dict[str, object] = {
        "id": tid,
        "online": True,
        "state_since": at(0),
        "last_seen": at(5),
        "first_seen": at(0),
        "hall": "Hall A",
        "region": "North",
        "model": "KX-200",
        "last_sent_at": at(4),
        "boot_id": "boot-aaaa",
        "last_seq": 42,
        "report_interval_s": 10.0,
        "agent_version": "1.0.0",
        "software": {"kiosk-app": "3.1"},
        "peripherals": (
            PeripheralView(
                "printer",
                PeripheralKind.RECEIPT_PRINTER,
                PeripheralCondition.PAPER_OUT,
                at(3),
                fault_code="E12",
                detail="no paper",
            ),
        ),
    }
    values.update(over)
    return TerminalView(**values)  # type: ignore[arg-type]


def transition(tid: str, to_state: str, recorded: float) -> Transition:
    return Transition(
        terminal_id=tid,
        subject="printer",
        kind="receipt_printer",
        from_state="ok",
        to_state=to_state,
        occurred_at=at(recorded - 1),
        recorded_at=at(recorded),
        fault_code="E1",
    )


def test_written_terminal_loads_back_identical(storage: Storage) -> None:
    v = terminal()
    storage.write(WriteBatch(terminals=[v], peripheral_ids=frozenset({"T-1"})), now=at(6))
    [loaded] = storage.load_fleet()
    assert loaded == v
    assert loaded.last_seen.tzinfo is not None


def test_upsert_updates_latest_state_and_keeps_first_seen(storage: Storage) -> None:
    storage.write(WriteBatch(terminals=[terminal()], peripheral_ids=frozenset({"T-1"})), now=at(6))
    later = terminal(
        online=False,
        offline_reason=OfflineReason.WILL,
        last_seq=99,
        last_seen=at(60),
        first_seen=at(50),
        hall="Hall B",
    )
    storage.write(WriteBatch(terminals=[later]), now=at(61))
    [loaded] = storage.load_fleet()
    assert (loaded.online, loaded.offline_reason, loaded.last_seq, loaded.hall) == (
        False,
        OfflineReason.WILL,
        99,
        "Hall B",
    )
    assert loaded.first_seen == at(0)
    assert loaded.peripherals == terminal().peripherals  # not in peripheral_ids: untouched


def test_peripheral_rewrite_replaces_the_whole_set(storage: Storage) -> None:
    storage.write(WriteBatch(terminals=[terminal()], peripheral_ids=frozenset({"T-1"})), now=at(6))
    reader = PeripheralView("idcard", PeripheralKind.ID_CARD_READER, PeripheralCondition.OK, at(7))
    storage.write(
        WriteBatch(terminals=[terminal(peripherals=(reader,))], peripheral_ids=frozenset({"T-1"})),
        now=at(8),
    )
    [loaded] = storage.load_fleet()
    assert loaded.peripherals == (reader,)


def test_history_is_newest_first_per_terminal_and_limited(storage: Storage) -> None:
    batch = WriteBatch(
        transitions=[
            transition("T-1", "jam", 10),
            transition("T-1", "ok", 20),
            transition("T-2", "fault", 15),
            transition("T-1", "paper_out", 30),
        ]
    )
    storage.write(batch, now=at(31))
    assert [t.to_state for t in storage.history("T-1", 10)] == ["paper_out", "ok", "jam"]
    assert [t.to_state for t in storage.history("T-1", 2)] == ["paper_out", "ok"]
    assert storage.history("nobody", 10) == []
    [first] = storage.history("T-2", 10)
    assert first == transition("T-2", "fault", 15)
    assert storage.count_transitions() == 4


def test_large_batch_is_written_in_one_go(storage: Storage) -> None:
    views = [terminal(f"T-{i:04d}") for i in range(1200)]
    ids = frozenset(v.id for v in views)
    storage.write(
        WriteBatch(
            terminals=views,
            peripheral_ids=ids,
            transitions=[transition(v.id, "jam", 1) for v in views],
        ),
        now=at(2),
    )
    loaded = storage.load_fleet()
    assert len(loaded) == 1200
    assert all(len(v.peripherals) == 1 for v in loaded)
    assert storage.count_transitions() == 1200


def test_fleet_state_round_trips_through_the_database_with_its_dedup_position(
    storage: Storage,
) -> None:
    fleet = FleetState()
    fleet.apply(report("T-1", 7, peripherals=[periph("printer", "receipt_printer", "jam")]), T0)
    views = fleet.snapshot(["T-1"])
    storage.write(WriteBatch(terminals=views, peripheral_ids=frozenset({"T-1"})), now=T0)
    restored = FleetState()
    restored.load(storage.load_fleet())
    assert restored.get("T-1") == fleet.get("T-1")
    assert restored.apply(report("T-1", 7), at(1)).verdict is Verdict.DUPLICATE


def test_check_database_passes_on_a_reachable_database(storage: Storage) -> None:
    storage.check_database()


def test_unreachable_postgresql_raises_storage_error() -> None:
    s = Storage("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StorageError) as info:
        s.open()
    assert info.value.operation == "migrate schema"
    s.close()


def test_unsupported_database_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Storage("mysql://localhost/x").open()
    with pytest.raises(ConfigError):
        Storage("not a url at all").open()


def test_sqlite_folder_is_created_and_wal_is_on(tmp_path: Path) -> None:
    s = Storage(f"sqlite:///{tmp_path}/deep/er/kf.db")
    s.open()
    try:
        with s.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        assert mode == "wal"
        assert (tmp_path / "deep" / "er" / "kf.db").exists()
    finally:
        s.close()


def test_write_failure_raises_storage_error_and_writes_nothing(tmp_path: Path) -> None:
    s = Storage(f"sqlite:///{tmp_path}/kf.db", sqlite_busy_timeout_s=0.1)
    s.open()
    try:
        blocker = s.engine.raw_connection()
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError) as info:
            s.write(WriteBatch(terminals=[terminal()]), now=at(1))
        assert "locked" in info.value.message
        blocker.rollback()
        blocker.close()
        assert s.load_fleet() == []
    finally:
        s.close()


def test_nul_in_device_text_is_stored_as_a_replacement_char_and_never_blocks_the_batch(
    storage: Storage,
) -> None:
    # The wire lets agent_version, fault_code and detail carry U+0000; PostgreSQL text cannot,
    # and a refused batch is retried forever: one terminal would stop every write of the fleet.
    nul = terminal(
        agent_version="1.0\x00",
        peripherals=(
            PeripheralView(
                "printer",
                PeripheralKind.RECEIPT_PRINTER,
                PeripheralCondition.JAM,
                at(3),
                fault_code="E\x001",
                detail="jam\x00med",
            ),
        ),
    )
    other = terminal("T-2")
    fault = Transition(
        terminal_id="T-1",
        subject="printer",
        kind="receipt_printer",
        from_state="ok",
        to_state="jam",
        occurred_at=at(2),
        recorded_at=at(3),
        fault_code="E\x001",
    )
    batch = WriteBatch(
        terminals=[nul, other], peripheral_ids=frozenset({"T-1", "T-2"}), transitions=[fault]
    )
    storage.write(batch, now=at(6))
    loaded = {v.id: v for v in storage.load_fleet()}
    assert loaded["T-2"] == other
    assert loaded["T-1"].agent_version == "1.0\ufffd"
    [p] = loaded["T-1"].peripherals
    assert (p.fault_code, p.detail) == ("E\ufffd1", "jam\ufffdmed")
    [stored] = storage.history("T-1", 10)
    assert stored.fault_code == "E\ufffd1"


def test_postgresql_statement_timeout_ends_a_blocked_write_as_a_transient_error(
    postgres_url: str,
) -> None:
    s = Storage(postgres_url, statement_timeout_s=0.3)
    s.open()
    try:
        with s.engine.connect() as conn:
            assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "300ms"
        with s.engine.connect() as blocker, blocker.begin():
            blocker.execute(sa.text("LOCK TABLE terminal IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(StorageError) as info:
                s.write(WriteBatch(terminals=[terminal()]), now=at(1))
        assert not isinstance(info.value, StorageDataError)  # retried, not dropped
        assert "statement timeout" in info.value.message
        s.write(WriteBatch(terminals=[terminal()]), now=at(2))
        assert [v.id for v in s.load_fleet()] == ["T-1"]
    finally:
        s.close()


@pytest.mark.parametrize(
    "bad",
    [
        terminal("T-\x00"),  # PostgreSQL text cannot hold U+0000
        terminal(hall="h" * 65),  # longer than the column
    ],
    ids=["nul-in-id", "too-long"],
)
def test_postgresql_refusing_a_value_is_a_data_error_not_a_transient_one(
    postgres_url: str, bad: TerminalView
) -> None:
    s = Storage(postgres_url)
    s.open()
    try:
        with pytest.raises(StorageDataError):
            s.write(WriteBatch(terminals=[bad]), now=at(1))
    finally:
        s.close()


def test_sqlite_database_full_is_a_transient_error_not_a_data_error(tmp_path: Path) -> None:
    s = Storage(f"sqlite:///{tmp_path}/kf.db")
    s.open()
    try:

        @sa.event.listens_for(s.engine, "connect")
        def _tiny(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count={pages + 2}")
            cursor.close()

        s.engine.dispose()  # new connections get the cap: the "disk" is full
        many = [terminal(f"T-{i}", hall="h" * 60) for i in range(2000)]
        with pytest.raises(StorageError) as info:
            s.write(WriteBatch(terminals=many), now=at(1))
        assert not isinstance(info.value, StorageDataError)  # space may come back: retry
        assert "full" in info.value.message
    finally:
        s.close()


def _event(tid: str, seq: int, received: float) -> EventRecord:
    return EventRecord(
        terminal_id=tid,
        boot_id="stream-0001",
        seq=seq,
        type="boot",
        sent_at=at(received),
        received_at=at(received),
        body={"type": "boot", "uptime_s": 1.0, "agent_version": "1.0.0"},
    )


def test_an_event_written_twice_is_stored_once_and_read_back_newest_first(
    storage: Storage,
) -> None:
    first = [_event("T-ev", seq, seq) for seq in (1, 2, 3)]
    storage.write(WriteBatch(events=first), now=at(10))
    storage.write(WriteBatch(events=[first[1], _event("T-ev", 4, 4)]), now=at(11))
    assert storage.count_events() == 4
    stored = storage.events("T-ev", limit=10)
    assert [e.seq for e in stored] == [4, 3, 2, 1]
    assert stored[-1].body == first[0].body
    assert [e.seq for e in storage.events("T-ev", limit=2)] == [4, 3]


def test_pruning_deletes_only_events_older_than_the_retention_in_chunks(storage: Storage) -> None:
    events = [_event("T-old", seq, seq) for seq in range(1, 8)] + [_event("T-new", 1, 100)]
    storage.write(WriteBatch(events=events), now=at(101))
    deleted = storage.prune_events(older_than=timedelta(seconds=50), now=at(110), chunk=3)
    assert deleted == 7
    assert storage.count_events() == 1
    assert [e.terminal_id for e in storage.events("T-new", limit=10)] == ["T-new"]
    assert storage.prune_events(older_than=timedelta(seconds=50), now=at(110), chunk=3) == 0


def test_pruning_deletes_only_transitions_older_than_the_retention_in_chunks(
    storage: Storage,
) -> None:
    def transition(terminal: str, recorded: float) -> Transition:
        return Transition(
            terminal_id=terminal,
            subject="printer",
            kind="receipt_printer",
            from_state="ok",
            to_state="jam",
            occurred_at=at(recorded),
            recorded_at=at(recorded),
        )

    old = [transition("T-old", s) for s in range(1, 8)]
    storage.write(WriteBatch(transitions=[*old, transition("T-new", 100)]), now=at(101))
    assert storage.prune_transitions(older_than=timedelta(seconds=50), now=at(110), chunk=3) == 7
    assert storage.count_transitions() == 1
    assert [t.terminal_id for t in storage.history("T-new", limit=10)] == ["T-new"]


def test_a_position_only_write_updates_only_the_position_columns(storage: Storage) -> None:
    storage.write(WriteBatch(terminals=[terminal()], peripheral_ids=frozenset({"T-1"})), now=at(6))
    moved = terminal(
        last_seq=43, last_seen=at(15), last_sent_at=at(14), reports_received=7, hall="Hall Z"
    )
    storage.write(WriteBatch(terminals=[moved], position_only=frozenset({"T-1"})), now=at(16))
    [loaded] = storage.load_fleet()
    assert (loaded.last_seq, loaded.last_seen, loaded.last_sent_at, loaded.reports_received) == (
        43,
        at(15),
        at(14),
        7,
    )
    assert loaded.hall == "Hall A"  # not a position column: the caller vouched it is unchanged
    assert loaded.peripherals == terminal().peripherals


def test_a_position_only_write_of_a_missing_row_writes_it_whole(storage: Storage) -> None:
    storage.write(WriteBatch(terminals=[terminal("T-1")]), now=at(6))
    batch = WriteBatch(
        terminals=[terminal("T-1", last_seq=50), terminal("T-2", last_seq=9)],
        position_only=frozenset({"T-1", "T-2"}),
    )
    storage.write(batch, now=at(7))
    loaded = {v.id: v for v in storage.load_fleet()}
    assert (loaded["T-1"].last_seq, loaded["T-2"].last_seq) == (50, 9)
    assert loaded["T-2"].hall == "Hall A"


# --- several replicas writing the same messages (docs/scale-out.md) --------------------------


def _replica_transitions(delay: float) -> list[Transition]:
    """The transitions one replica records for the same messages (all sent at one device
    time), received ``delay`` seconds after the others do."""
    fleet = FleetState()
    jam = periph("printer", "receipt_printer", "jam")
    fault = periph("reader", "id_card_reader", "fault")
    messages = [
        state("T-1", True, seq=0),
        report("T-1", 1, peripherals=[jam]),
        peripheral_event("T-1", 2, periph("printer", "receipt_printer"), "jam"),
        peripheral_event("T-1", 3, jam, "ok"),  # jam -> ok -> jam within one sent_at
        report("T-1", 4, peripherals=[jam, fault]),
        state("T-1", False, seq=4),  # the will: occurred_at is the server's time
        state("T-1", True, seq=4, sent_at=at(1)),
        report("T-2", 1, peripherals=[jam]),
    ]
    return [
        t for i, m in enumerate(messages) for t in fleet.apply(m, at(10 * i + delay)).transitions
    ]


def test_two_replicas_writing_the_same_messages_transitions_store_each_once(
    database_url: str,
) -> None:
    first, second = _replica_transitions(0.0), _replica_transitions(0.3)
    replicas = [Storage(database_url), Storage(database_url)]
    for s in replicas:
        s.open()
    try:
        replicas[0].write(WriteBatch(transitions=first), now=at(100))
        replicas[1].write(WriteBatch(transitions=second), now=at(100))
        replicas[0].write(WriteBatch(transitions=first), now=at(101))  # a retried batch too
        stored = [*replicas[1].history("T-1", 100)[::-1], *replicas[1].history("T-2", 100)[::-1]]
    finally:
        for s in replicas:
            s.close()
    assert [(t.terminal_id, t.subject, t.to_state) for t in stored] == [
        ("T-1", "connectivity", "online"),
        ("T-1", "printer", "jam"),
        ("T-1", "printer", "ok"),
        ("T-1", "printer", "jam"),
        ("T-1", "reader", "fault"),
        ("T-1", "connectivity", "offline"),
        ("T-1", "connectivity", "online"),
        ("T-2", "connectivity", "online"),
        ("T-2", "printer", "jam"),
    ]
    assert len(first) == len(stored)  # every real transition is there, none twice
    assert {t.recorded_at for t in stored} == {t.recorded_at for t in first}  # first writer's


def test_transitions_the_server_decided_are_never_merged(storage: Storage) -> None:
    sweep = [transition("T-1", "offline", 10), transition("T-1", "offline", 10)]
    storage.write(WriteBatch(transitions=sweep), now=at(11))
    assert storage.count_transitions() == 2  # no cause: the lease holder's, written once each


def test_a_write_behind_the_row_in_its_stream_changes_nothing(storage: Storage) -> None:
    ahead = terminal(last_seq=42, reports_received=10, seq_gaps=1)
    storage.write(WriteBatch(terminals=[ahead], peripheral_ids=frozenset({"T-1"})), now=at(6))
    lagging = terminal(last_seq=40, reports_received=8, seq_gaps=0, hall="Hall Lag")
    storage.write(WriteBatch(terminals=[lagging]), now=at(7))
    storage.write(WriteBatch(terminals=[lagging], position_only=frozenset({"T-1"})), now=at(8))
    [loaded] = storage.load_fleet()
    assert loaded == ahead


def test_a_write_further_along_or_in_a_new_stream_applies_and_a_straggler_does_not(
    storage: Storage,
) -> None:
    storage.write(WriteBatch(terminals=[terminal(last_seq=42)]), now=at(6))
    same_position = terminal(last_seq=42, reports_received=11)  # counters of the same position
    storage.write(WriteBatch(terminals=[same_position]), now=at(7))
    assert storage.load_fleet()[0].reports_received == 11
    storage.write(WriteBatch(terminals=[terminal(last_seq=50, hall="Hall B")]), now=at(8))
    assert (storage.load_fleet()[0].last_seq, storage.load_fleet()[0].hall) == (50, "Hall B")
    new_stream = terminal(boot_id="boot-bbbb", last_seq=3, prev_boot_id="boot-aaaa")
    storage.write(WriteBatch(terminals=[new_stream]), now=at(9))
    assert (storage.load_fleet()[0].boot_id, storage.load_fleet()[0].last_seq) == ("boot-bbbb", 3)
    straggler = terminal(last_seq=99, hall="Hall Old")  # a replica still on boot-aaaa
    storage.write(WriteBatch(terminals=[straggler]), now=at(10))
    storage.write(WriteBatch(terminals=[straggler], position_only=frozenset({"T-1"})), now=at(11))
    [loaded] = storage.load_fleet()
    assert (loaded.boot_id, loaded.last_seq, loaded.hall) == ("boot-bbbb", 3, "Hall A")


def test_an_offline_behind_the_row_takes_it_offline_and_keeps_its_position(
    storage: Storage,
) -> None:
    storage.write(WriteBatch(terminals=[terminal(last_seq=42, reports_received=10)]), now=at(6))
    # The lease holder's sweep, on a replica that missed the terminal's last report.
    swept = terminal(
        last_seq=41,
        reports_received=9,
        online=False,
        state_since=at(60),
        offline_reason=OfflineReason.TIMEOUT,
    )
    storage.write(WriteBatch(terminals=[swept]), now=at(61))
    [loaded] = storage.load_fleet()
    assert (loaded.online, loaded.state_since, loaded.offline_reason) == (
        False,
        at(60),
        OfflineReason.TIMEOUT,
    )
    assert (loaded.last_seq, loaded.reports_received) == (42, 10)


def test_open_gaps_are_stored_with_a_whole_row_and_reloaded_with_it(storage: Storage) -> None:
    """What a replica taking the terminal over reloads (docs/scale-out.md, "One writer per
    terminal"): the gaps as of the row's write; a write behind the row keeps them."""
    gaps = (Gap(3, 5, at(1)), Gap(9, 9, at(2)))
    storage.write(WriteBatch(terminals=[terminal("T-1")], open_gaps={"T-1": gaps}), now=at(6))
    storage.write(WriteBatch(terminals=[terminal("T-2")]), now=at(6))
    views, stored = storage.load_terminals(["T-1", "T-2", "T-3"])
    assert sorted(v.id for v in views) == ["T-1", "T-2"]
    assert stored == {"T-1": gaps}
    behind = terminal("T-1", last_seq=41)  # a lagging writer's: the row and its gaps stay
    storage.write(WriteBatch(terminals=[behind]), now=at(7))
    assert storage.load_terminals(["T-1"])[1] == {"T-1": gaps}
    storage.write(WriteBatch(terminals=[terminal("T-1", last_seq=43)]), now=at(8))
    [ahead], none = storage.load_terminals(["T-1"])
    assert (ahead.last_seq, none) == (43, {})  # written whole without gaps: none kept
