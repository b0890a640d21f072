"""The Alembic migrations produce exactly the models' schema, on SQLite and PostgreSQL, and a
database made by the old ``create_all`` (before migrations) upgrades in place, keeping its rows."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from server.config import Settings
from server.errors import StorageError
from server.fleet_views import Transition
from server.records import WriteBatch
from server.storage import Storage, alembic_config, server_metadata, upgrade_schema

_OLD_TABLES = ("terminal", "peripheral", "transition")


def _differences(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, server_metadata()))


def _bare_engine(database_url: str) -> sa.Engine:
    """An engine on the test's database, not migrated (the SQLite folder made)."""
    if database_url.startswith("sqlite"):
        Path(sa.make_url(database_url).database or "").parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(database_url)


@contextmanager
def _opened(database_url: str) -> Iterator[Storage]:
    """The server's storage on it, migrated to head, its schema the models' exactly."""
    storage = Storage(database_url)
    storage.open()
    try:
        assert _differences(storage.engine) == []
        yield storage
    finally:
        storage.close()


def test_migrated_schema_equals_the_models_schema(database_url: str) -> None:
    storage = Storage(database_url)
    storage.open()
    try:
        assert _differences(storage.engine) == []
        with storage.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == (
                "0016"
            )
    finally:
        storage.close()


def test_database_made_by_the_old_create_all_is_stamped_and_upgraded_keeping_its_rows(
    database_url: str,
) -> None:
    engine = _bare_engine(database_url)
    try:
        upgrade_schema(engine, "0001")  # exactly the tables create_all used to make
        now = datetime(2026, 1, 1, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE alembic_version"))  # as create_all left it
            conn.execute(
                sa.text(
                    "INSERT INTO terminal (id, online, online_since, last_seen, boot_id, last_seq,"
                    " software, first_seen, updated_at) VALUES ('T-OLD', true, :t, :t,"
                    " 'boot-old1', 41, '{}', :t, :t)"
                ),
                {"t": now.isoformat() if engine.dialect.name == "sqlite" else now},
            )
        assert "alembic_version" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()

    with _opened(database_url) as storage:
        [view] = storage.load_fleet()
        assert (view.id, view.boot_id, view.last_seq) == ("T-OLD", "boot-old1", 41)
        assert (view.reports_received, view.seq_gaps, view.dropped_reports) == (0, 0, 0)
        assert storage.count_events() == 0


def test_upgrade_to_0015_removes_duplicate_transitions_keeping_the_lowest_id(
    database_url: str,
) -> None:
    engine = _bare_engine(database_url)

    def t(seconds: int) -> object:
        value = datetime(2026, 1, 1, 0, 0, seconds, tzinfo=UTC)
        return value.isoformat() if engine.dialect.name == "sqlite" else value

    # (id, subject, from_state, to_state, occurred_at, recorded_at): 2 and 5 are a second
    # replica's copies of 1 and 4 (recorded a little later); 3 and 6 are other transitions.
    rows = [
        (1, "printer", None, "jam", 1, 2),
        (2, "printer", None, "jam", 1, 3),
        (3, "printer", "jam", "ok", 1, 2),
        (4, "connectivity", "online", "offline", 5, 5),
        (5, "connectivity", "online", "offline", 5, 6),
        (6, "connectivity", "online", "offline", 9, 9),
    ]
    try:
        upgrade_schema(engine, "0014")
        with engine.begin() as conn:
            for row_id, subject, from_state, to_state, occurred, recorded in rows:
                conn.execute(
                    sa.text(
                        "INSERT INTO transition (id, terminal_id, subject, kind, from_state,"
                        " to_state, occurred_at, recorded_at) VALUES (:id, 'T-1', :subject,"
                        " :subject, :from_state, :to_state, :occurred, :recorded)"
                    ),
                    {
                        "id": row_id,
                        "subject": subject,
                        "from_state": from_state,
                        "to_state": to_state,
                        "occurred": t(occurred),
                        "recorded": t(recorded),
                    },
                )
        upgrade_schema(engine, "0015")
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT id FROM transition ORDER BY id")).scalars().all()
            assert kept == [1, 3, 4, 6]
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT setval('transition_id_seq', 6)"))
                conn.commit()
    finally:
        engine.dispose()

    with _opened(database_url) as storage:
        caused = Transition(
            terminal_id="T-1",
            subject="printer",
            kind="receipt_printer",
            from_state="ok",
            to_state="jam",
            occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
            recorded_at=datetime(2026, 1, 2, tzinfo=UTC),
            cause="boot-aaaa:7",
        )
        storage.write(WriteBatch(transitions=[caused, caused]), now=caused.recorded_at)
        assert storage.count_transitions() == 5  # the four kept, and the caused one once


def test_kioskfleet_db_upgrade_migrates_an_empty_database_to_head(
    database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "KIOSKFLEET_DATABASE_URL": database_url}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kioskfleet"), "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(Settings(database_url=database_url).database_url)
    try:
        assert _differences(engine) == []
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    finally:
        engine.dispose()


def test_servers_starting_together_on_a_fresh_postgresql_database_all_migrate_it(
    postgres_url: str,
) -> None:
    # Replicas rolled out at once: without serialising, two create the same tables and one
    # dies on the catalog's unique index.
    starters = 4
    barrier = threading.Barrier(starters)
    errors: list[BaseException] = []
    storages = [Storage(postgres_url) for _ in range(starters)]

    def start(storage: Storage) -> None:
        barrier.wait(10)
        try:
            storage.open()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert _differences(storages[0].engine) == []
    finally:
        for s in storages:
            s.close()


def test_a_database_at_a_revision_this_server_does_not_know_is_a_storage_error(
    database_url: str,
) -> None:
    storage = Storage(database_url)
    storage.open()
    with storage.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    storage.close()
    newer = Storage(database_url)
    try:
        with pytest.raises(StorageError, match="9999"):
            newer.open()
    finally:
        newer.close()
