"""Where the fleet hits the disk: the database tables and the repository over them.

Tables (SQLModel, separate from the wire models; see docs/data-model.md):
``terminal`` (latest state of each terminal, with its dedup position and
delivery counters), ``peripheral`` (latest condition of each peripheral),
``transition`` (every change of connectivity or of a peripheral's condition,
once: unique by terminal, cause, subject and to_state),
``event`` (every event a terminal sent, once: unique by terminal, boot_id,
seq). Every heartbeat is *not* stored: the batched writer
(``server.write_behind``) upserts the latest state of the terminals that
changed, once per flush, in one transaction. The schema is created and
upgraded by the Alembic migrations in ``server/migrations`` (``open`` runs
them).

The tables are the schema; the read models they store (``TerminalView``,
``PeripheralView``, ``Transition``, ``EventRecord``) declare the fields. Each
pair is joined by one ``_RowMapping`` (same names, a rename or a conversion
where needed), which refuses at import a field without a column or a column
without a field: a new field is added to the read model, the table and a
migration, and nothing else.

Works on SQLite (WAL, busy timeout; the embedded default) and PostgreSQL
(psycopg 3): upserts use each dialect's ``INSERT ... ON CONFLICT``. Every
SQLAlchemy error is translated into ``server.errors.StorageError`` (a
constraint or data error into ``StorageDataError``: retrying cannot help); this
module never lets a driver exception escape and never decides anything about
the fleet (that is ``server.fleet_state``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from protocol.messages import PeripheralCondition, PeripheralKind
from server.errors import ConfigError, StorageDataError, StorageError
from server.fleet_views import (
    OfflineReason,
    PeripheralView,
    TerminalView,
    Transition,
)
from server.history_query import HistoryQuery, Position, StoredPage, encode_position
from server.lease_fence import Fence, check_current
from server.position_write import update_positions
from server.records import EventRecord, WriteBatch
from server.stream_gaps import Gap, Gaps

__all__ = [
    "EventRow",
    "PeripheralRow",
    "ServerTable",
    "Storage",
    "TerminalRow",
    "TransitionRow",
    "alembic_config",
    "database_errors",
    "server_metadata",
    "upgrade_schema",
]

log = logging.getLogger(__name__)

_CHUNK: Final = 500  # rows or ids per statement
_PRUNE_CHUNK: Final = 5000  # events deleted per transaction by the retention job
_NUL: Final = "\x00"
_REPLACEMENT: Final = "\ufffd"


class _Table(SQLModel, registry=registry()):
    """Base of the server's tables: their own metadata, so other packages' tables never mix in."""


ServerTable = _Table
"""The base for tables other server modules declare (``server.access_store``): they join
this metadata, which the migrations must produce."""


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, ISO-8601 text on SQLite.

    SQLAlchemy's own SQLite datetime formatting costs ~4 us per value in Python;
    ``isoformat``/``fromisoformat`` are C and keep the flush cheap. Values are
    normalised to UTC so that text order is time order.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(32))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.isoformat(timespec="microseconds")

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        return _utc(value)


def _ts(nullable: bool = False, **kw: Any) -> Any:
    return Field(sa_column=sa.Column(UtcDateTime(), nullable=nullable, **kw))


def _text(length: int, nullable: bool = True, **kw: Any) -> Any:
    return Field(sa_column=sa.Column(sa.String(length), nullable=nullable, **kw))


def _counter() -> Any:
    return Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="0"))


class TerminalRow(_Table, table=True):
    """Latest state of one terminal (one row per terminal, rewritten in batches)."""

    __tablename__ = "terminal"

    id: str = _text(64, nullable=False, primary_key=True)
    hall: str | None = _text(64, index=True)
    region: str | None = _text(64, index=True)
    model: str | None = _text(64)
    online: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    online_since: datetime = _ts()  # when ``online`` last changed (either way)
    offline_reason: str | None = _text(16)
    last_seen: datetime = _ts()  # server time of the last sign of life
    last_sent_at: datetime | None = _ts(nullable=True)  # device time of the newest message
    boot_id: str | None = _text(64)  # the current sequence stream
    last_seq: int | None = Field(sa_column=sa.Column(sa.BigInteger, nullable=True))
    prev_boot_id: str | None = _text(64)  # the stream it replaced (stragglers are stale)
    reports_received: int = _counter()
    events_received: int = _counter()
    seq_gaps: int = _counter()  # sequence numbers never received, all streams
    dropped_reports: int = _counter()  # the terminal's own count for its current boot_id
    report_interval_s: float | None = Field(sa_column=sa.Column(sa.Float, nullable=True))
    agent_version: str | None = _text(32)
    software: dict[str, str] = Field(
        default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False)
    )
    first_seen: datetime = _ts()
    updated_at: datetime = _ts()
    # The current stream's open sequence gaps as of the row's write, [[first, last,
    # noticed_at], ...] or NULL: what a replica taking the terminal over reloads
    # (docs/scale-out.md, "One writer per terminal"), so the old owner's gaps stay fillable.
    open_gaps: list[list[Any]] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON(none_as_null=True), nullable=True)
    )


class PeripheralRow(_Table, table=True):
    """Latest condition of one peripheral of one terminal."""

    __tablename__ = "peripheral"

    terminal_id: str = _text(64, nullable=False, primary_key=True)
    name: str = _text(64, nullable=False, primary_key=True)
    kind: str = _text(32, nullable=False)
    condition: str = _text(32, nullable=False)
    fault_code: str | None = _text(64)
    detail: str | None = _text(256)
    since: datetime = _ts()


class TransitionRow(_Table, table=True):
    """One change of a terminal's connectivity or of one peripheral's condition."""

    __tablename__ = "transition"
    __table_args__ = (
        sa.Index("ix_transition_terminal_recorded", "terminal_id", "recorded_at"),
        sa.Index("uq_transition_cause", "terminal_id", "cause", "subject", "to_state", unique=True),
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    terminal_id: str = _text(64, nullable=False)
    subject: str = _text(64, nullable=False)  # "connectivity" or the peripheral name
    kind: str = _text(32, nullable=False)  # "connectivity" or the peripheral kind
    from_state: str | None = _text(32)
    to_state: str = _text(32, nullable=False)
    fault_code: str | None = _text(64)
    reason: str | None = _text(16)
    occurred_at: datetime = _ts()  # device time where the device said when
    recorded_at: datetime = _ts()  # server time
    cause: str | None = _text(128)  # the message behind it; NULL: the server's (never a conflict)


class EventRow(_Table, table=True):
    """One event a terminal sent (stored once: unique by terminal, boot_id and seq)."""

    __tablename__ = "event"
    __table_args__ = (
        sa.UniqueConstraint("terminal_id", "boot_id", "seq", name="uq_event_terminal_boot_seq"),
        sa.Index("ix_event_terminal_received", "terminal_id", "received_at"),
        sa.Index("ix_event_received", "received_at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    terminal_id: str = _text(64, nullable=False)
    boot_id: str = _text(64, nullable=False)
    seq: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    type: str = _text(32, nullable=False)  # the event body's ``type``
    sent_at: datetime = _ts()  # device time
    received_at: datetime = _ts()  # server time
    body: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))


_METADATA: Final = _Table.metadata


_TABLE_MODULES: Final = (
    "server.identity_tables",
    "server.access_store",
    "server.opening_hours_store",
    "server.update_status_store",
    "server.rollout_store",
    "server.console_store",
    "server.maintenance_store",
    "server.usage_store",
    "server.service_store",
    "server.usage_rollup_store",
    "server.job_lease",
    "server.membership",
)  # tables declared beside their owners


def server_metadata() -> sa.MetaData:
    """The server's table metadata (what the migrations must produce), including the tables
    of ``_TABLE_MODULES``, declared beside their owners on ``ServerTable`` (imported here:
    they build on this module's base)."""
    for name in _TABLE_MODULES:
        importlib.import_module(name)
    return _METADATA


def _usage_store() -> Any:
    """``server.usage_store`` (it builds on this module: imported when first used)."""
    return importlib.import_module("server.usage_store")


def _update_status_store() -> Any:
    """``server.update_status_store`` (it builds on this module: imported when first used)."""
    return importlib.import_module("server.update_status_store")


_TERMINAL: Final = _METADATA.tables["terminal"]
_PERIPHERAL: Final = _METADATA.tables["peripheral"]
_TRANSITION: Final = _METADATA.tables["transition"]
_EVENT: Final = _METADATA.tables["event"]
_TERMINAL_UPDATE_COLUMNS: Final = tuple(
    c.name for c in _TERMINAL.columns if c.name not in ("id", "first_seen")
)
# What a write that is behind the stored row still changes: connectivity (the lease
# holder's offline sweep may have missed the terminal's last message).
_CONNECTIVITY_COLUMNS: Final = ("online", "online_since", "offline_reason", "updated_at")


def _not_behind(excluded: Any) -> sa.ColumnElement[bool]:
    """Whether a terminal write (``excluded``) may replace the stored row: not from the
    stream the row already replaced (``prev_boot_id``: a lagging replica's straggler), and
    either a new stream or at least as far along in the row's (equal: same position, the
    counters may still have changed). A write behind changes only the connectivity
    (``_CONNECTIVITY_COLUMNS``), and only when it differs."""
    row = _TERMINAL.c
    stale = sa.func.coalesce(excluded.boot_id == row.prev_boot_id, sa.false())
    return sa.and_(
        sa.not_(stale),
        sa.or_(
            excluded.boot_id.is_distinct_from(row.boot_id),
            row.last_seq.is_(None),
            excluded.last_seq >= row.last_seq,
        ),
    )


def _gaps_json(gaps: Gaps | None) -> list[list[Any]] | None:
    """Open gaps as the ``open_gaps`` column holds them (None for none)."""
    if not gaps:
        return None
    return [[g.first, g.last, g.noticed_at.astimezone(UTC).isoformat()] for g in gaps]


def _gaps_of(value: Any) -> Gaps:
    """The ``open_gaps`` column back as gaps; anything malformed is no gap."""
    try:
        return tuple(
            Gap(int(first), int(last), _utc(datetime.fromisoformat(str(noticed))))
            for first, last, noticed in value or ()
        )
    except (TypeError, ValueError):
        return ()


def _load_terminals(conn: Connection, ids: Sequence[str] | None) -> list[TerminalView]:
    """Terminal rows as views with their peripherals: all of them, or those of ``ids``."""
    peripherals: dict[str, list[PeripheralView]] = defaultdict(list)
    wanted = sa.select(_PERIPHERAL).order_by(_PERIPHERAL.c.name)
    terminals = sa.select(_TERMINAL)
    if ids is not None:
        wanted = wanted.where(_PERIPHERAL.c.terminal_id.in_(ids))
        terminals = terminals.where(_TERMINAL.c.id.in_(ids))
    for row in conn.execute(wanted).mappings():
        view = _peripheral_view(row)
        if view is not None:
            peripherals[row["terminal_id"]].append(view)
    return [
        _TERMINALS.model_of(row, peripherals=tuple(peripherals.get(row["id"], ())))
        for row in conn.execute(terminals).mappings()
    ]


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _newest_first(
    table: sa.Table, server_time: sa.Column[Any], terminal_id: str, query: HistoryQuery
) -> sa.Select[Any]:
    """One terminal's rows of ``table`` in ``query``'s range after its cursor, newest first by
    server time (then by id), one more than ``query.limit`` (to tell whether a page follows).
    Raises InvalidCursorError."""
    stmt = sa.select(table).where(table.c.terminal_id == terminal_id)
    if query.window.since is not None:
        stmt = stmt.where(server_time >= query.window.since)
    if query.window.until is not None:
        stmt = stmt.where(server_time < query.window.until)
    after = query.after()
    if after is not None:
        stmt = stmt.where(
            sa.or_(
                server_time < after.at,
                sa.and_(server_time == after.at, table.c.id < after.row_id),
            )
        )
    return stmt.order_by(server_time.desc(), table.c.id.desc()).limit(query.limit + 1)


def _page(
    rows: Sequence[Any], limit: int, item: Callable[[Any], _T], at: Callable[[_T], datetime]
) -> StoredPage[_T]:
    """The first ``limit`` of ``rows`` as items, with a cursor when there were more."""
    items = [item(r) for r in rows[:limit]]
    more = len(rows) > limit and items
    next_cursor = (
        encode_position(Position(at=at(items[-1]), row_id=int(rows[limit - 1]["id"])))
        if more
        else None
    )
    return StoredPage(items=tuple(items), next_cursor=next_cursor)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@contextmanager
def database_errors(operation: str) -> Iterator[None]:
    """SQLAlchemy's errors inside as StorageDataError (constraint or data: retrying the same
    rows fails again) or StorageError (anything else), naming ``operation``."""
    try:
        yield
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        message = detail[0] if detail else type(exc).__name__
        if isinstance(exc, IntegrityError | DataError):
            raise StorageDataError(operation, message) from exc
        raise StorageError(operation, message) from exc


class Storage:
    """The repository: load the fleet, write batches, read history, check the database."""

    def __init__(
        self,
        database_url: str,
        *,
        sqlite_busy_timeout_s: float = 5.0,
        statement_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._url_text = database_url
        self._busy_timeout_s = sqlite_busy_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._engine: Engine | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StorageError("use", "storage is not open")
        return self._engine

    def open(self) -> None:
        """Create the engine, the SQLite folder if needed, and migrate the schema to head.

        Raises ConfigError for an unusable URL, StorageError if the database refuses.
        """
        try:
            url = sa.make_url(self._url_text)
        except ArgumentError as exc:
            raise ConfigError(f"database_url: {exc}") from None
        backend = url.get_backend_name()
        if backend == "sqlite":
            engine = self._sqlite_engine(url)
        elif backend == "postgresql":
            timeout_ms = max(int(self._statement_timeout_s * 1000), 1)
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                connect_args={
                    "connect_timeout": max(round(self._connect_timeout_s), 1),
                    "options": f"-c statement_timeout={timeout_ms}",
                    # A silent network cut would otherwise hang a write for the kernel's
                    # TCP retry time (minutes): give up on unacknowledged data and on a
                    # silent peer after about the statement timeout.
                    "tcp_user_timeout": timeout_ms,
                    "keepalives": 1,
                    "keepalives_idle": 5,
                    "keepalives_interval": 2,
                    "keepalives_count": 3,
                },
            )
        else:
            raise ConfigError(f"unsupported database {backend!r} (use sqlite or postgresql)")
        self._engine = engine
        with database_errors("migrate schema"):
            try:
                upgrade_schema(engine)
            except CommandError as exc:  # e.g. a revision newer than this server knows
                raise StorageError("migrate schema", str(exc)) from exc

    def _sqlite_engine(self, url: sa.URL) -> Engine:
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        busy_ms = int(self._busy_timeout_s * 1000)
        engine = sa.create_engine(
            url, connect_args={"timeout": self._busy_timeout_s, "check_same_thread": False}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.close()

        return engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def connect(self, operation: str) -> Iterator[Connection]:
        """A connection for another repository over this database (``server.access_store``),
        with its errors translated like this module's own (StorageError naming ``operation``)."""
        with database_errors(operation), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self, operation: str, *, fenced: bool = True) -> Iterator[Connection]:
        """Like ``connect`` inside one transaction (committed at the end, else rolled back).

        Inside a run of a once-per-fleet job (``server.lease_fence``) the transaction starts
        with the job lease's fencing check: FencedOffError, nothing written, once another
        replica took the lease over. ``fenced=False`` only for a record of what was done
        already (an audit entry), which must not be lost to the fence."""
        with database_errors(operation), self.engine.begin() as conn:
            if fenced:
                check_current(conn, operation)
            yield conn

    # --- reads ----------------------------------------------------------------------------

    def check_database(self) -> None:
        """Raises StorageError unless a trivial query succeeds."""
        with database_errors("check database"), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def load_fleet(self) -> list[TerminalView]:
        """Every terminal with its peripherals, as the fleet state's startup copy.

        Raises StorageError.
        """
        with database_errors("load fleet"), self.engine.connect() as conn:
            return _load_terminals(conn, None)

    def load_terminals(
        self, terminal_ids: Sequence[str]
    ) -> tuple[list[TerminalView], dict[str, Gaps]]:
        """The stored rows of ``terminal_ids`` with their peripherals (absent ones are left
        out), and the open gaps stored with them: what a replica taking terminals over
        reloads (``server.membership``). Raises StorageError."""
        if not terminal_ids:
            return [], {}
        t = _TERMINAL.c
        stmt = sa.select(t.id, t.open_gaps).where(t.id.in_(terminal_ids), t.open_gaps.is_not(None))
        with database_errors("load terminals"), self.engine.connect() as conn:
            views = _load_terminals(conn, terminal_ids)
            gaps = {row.id: _gaps_of(row.open_gaps) for row in conn.execute(stmt)}
        return views, {tid: g for tid, g in gaps.items() if g}

    def offline_terminals(self) -> list[tuple[str, datetime, OfflineReason]]:
        """``(id, offline since, reason)`` of every terminal stored offline (for a new job
        lease holder: ``FleetState.adopt_offline``). Raises StorageError."""
        t = _TERMINAL.c
        stmt = sa.select(t.id, t.online_since, t.offline_reason).where(sa.not_(t.online))
        with database_errors("read offline terminals"), self.engine.connect() as conn:
            return [
                (
                    row.id,
                    row.online_since,
                    _offline_reason(row.offline_reason) or OfflineReason.TIMEOUT,
                )
                for row in conn.execute(stmt)
            ]

    def history(self, terminal_id: str, limit: int) -> list[Transition]:
        """Transitions of one terminal, newest first (by server time), at most ``limit``.

        Raises StorageError.
        """
        return list(self.history_page(terminal_id, HistoryQuery(limit=limit)).items)

    def history_page(self, terminal_id: str, query: HistoryQuery) -> StoredPage[Transition]:
        """One page of a terminal's transitions in ``query`` (server.history_query), newest
        first. Raises StorageError, InvalidCursorError."""
        stmt = _newest_first(_TRANSITION, _TRANSITION.c.recorded_at, terminal_id, query)
        with database_errors("read history"), self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return _page(rows, query.limit, _TRANSITIONS.model_of, lambda t: t.recorded_at)

    def events(self, terminal_id: str, limit: int) -> list[EventRecord]:
        """Stored events of one terminal, newest first (by server time), at most ``limit``.

        Raises StorageError.
        """
        return list(self.events_page(terminal_id, HistoryQuery(limit=limit)).items)

    def events_page(self, terminal_id: str, query: HistoryQuery) -> StoredPage[EventRecord]:
        """One page of a terminal's stored events in ``query``, newest first. Raises
        StorageError, InvalidCursorError."""
        stmt = _newest_first(_EVENT, _EVENT.c.received_at, terminal_id, query)
        with database_errors("read events"), self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return _page(rows, query.limit, _EVENTS.model_of, lambda e: e.received_at)

    def count_events(self) -> int:
        """How many events are stored (for tests and diagnostics). Raises StorageError."""
        with database_errors("count events"), self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_EVENT)).scalar_one())

    def prune_events(
        self, *, older_than: timedelta, now: datetime, chunk: int = _PRUNE_CHUNK
    ) -> int:
        """Delete events received before ``now - older_than``, ``chunk`` per transaction;
        returns how many.

        Raises StorageError.
        """
        return self._prune(_EVENT, _EVENT.c.received_at, now - older_than, chunk)

    def prune_update_statuses(
        self, *, older_than: timedelta, now: datetime, chunk: int = _PRUNE_CHUNK
    ) -> int:
        """Delete update statuses received before ``now - older_than``, ``chunk`` per
        transaction; returns how many.

        Raises StorageError.
        """
        table = server_metadata().tables["update_status"]
        return self._prune(table, table.c.received_at, now - older_than, chunk)

    def prune_usage_events(
        self, *, older_than: timedelta, now: datetime, chunk: int = _PRUNE_CHUNK
    ) -> int:
        """Delete raw citizen transactions received before ``now - older_than``, ``chunk``
        per transaction; returns how many.

        Raises StorageError.
        """
        table = server_metadata().tables["usage_event"]
        return self._prune(table, table.c.received_at, now - older_than, chunk)

    def prune_transitions(
        self, *, older_than: timedelta, now: datetime, chunk: int = _PRUNE_CHUNK
    ) -> int:
        """Delete transitions recorded before ``now - older_than``, ``chunk`` per
        transaction; returns how many.

        Raises StorageError.
        """
        return self._prune(_TRANSITION, _TRANSITION.c.recorded_at, now - older_than, chunk)

    def _prune(self, table: sa.Table, at: sa.Column[Any], cutoff: datetime, chunk: int) -> int:
        deleted = 0
        while True:  # in chunks: one huge DELETE could outlast the statement timeout every time
            with self.begin(f"prune {table.name}") as conn:
                ids = sa.select(table.c.id).where(at < cutoff).limit(chunk)
                result = conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
                count = int(result.rowcount or 0)
            deleted += count
            if count < chunk:
                return deleted

    def count_transitions(self) -> int:
        """How many transitions are stored (for tests and diagnostics). Raises StorageError."""
        with database_errors("count transitions"), self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(_TRANSITION)).scalar_one()
            )

    # --- writes ---------------------------------------------------------------------------

    def write(self, batch: WriteBatch, *, now: datetime) -> None:
        """Write one batch in one transaction: all of it or nothing.

        Raises StorageError (the batch is then not written at all).
        """
        if not batch:
            return
        with database_errors("write batch"), self.engine.begin() as conn:
            if batch.removed:  # first: a terminal seen again after its removal is a new row
                ids = sorted(batch.removed)
                for chunk in _chunks(ids):
                    conn.execute(sa.delete(_PERIPHERAL).where(_PERIPHERAL.c.terminal_id.in_(chunk)))
                    conn.execute(sa.delete(_TERMINAL).where(_TERMINAL.c.id.in_(chunk)))
            if batch.terminals:
                whole: Sequence[TerminalView] = batch.terminals
                if batch.position_only:
                    moved = [v for v in whole if v.id in batch.position_only]
                    whole = [v for v in whole if v.id not in batch.position_only]
                    if moved and not self._update_positions(conn, moved, now):
                        whole = [*whole, *moved]  # some row was missing: write them whole
                if whole:
                    self._upsert_terminals(conn, whole, now, batch.open_gaps)
            if batch.peripheral_ids:
                self._replace_peripherals(conn, batch)
            if batch.transitions:
                self._insert_transitions(conn, batch.transitions)
            if batch.events:
                self._insert_events(conn, batch.events)
            if batch.updates:
                _update_status_store().insert_updates(conn, self._insert(), batch.updates)
            if batch.usage:
                _usage_store().insert_usage(conn, self._insert(), batch.usage)
            if batch.fenced_transitions:  # last: the lease row stays locked until the commit
                self._insert_fenced(conn, batch.fenced_transitions)

    def _insert_fenced(self, conn: Connection, fenced: Sequence[tuple[Fence, Transition]]) -> None:
        """The offline sweep's transitions, each fence's only while it holds (a run whose
        lease another replica took over meanwhile writes none; ``Fence.refused`` hears)."""
        by_fence: dict[Fence, list[Transition]] = {}
        for fence, t in fenced:
            by_fence.setdefault(fence, []).append(t)
        for fence, transitions in by_fence.items():
            if not fence.holds(conn):
                fence.refuse("write offline transitions")
                continue
            self._insert_transitions(conn, transitions)

    def _insert_transitions(self, conn: Connection, transitions: Sequence[Transition]) -> None:
        # Every replica that applies a message writes its transitions: stored once.
        stmt = self._insert()(_TRANSITION).on_conflict_do_nothing(
            index_elements=[
                _TRANSITION.c.terminal_id,
                _TRANSITION.c.cause,
                _TRANSITION.c.subject,
                _TRANSITION.c.to_state,
            ]
        )
        rows = [_TRANSITIONS.row(t) for t in transitions]
        for chunk in _chunks(rows):
            conn.execute(stmt, list(chunk))

    def _insert_events(self, conn: Connection, events: Sequence[EventRecord]) -> None:
        # A duplicate that slipped past the in-memory check (a restart) is stored once.
        stmt = self._insert()(_EVENT).on_conflict_do_nothing(
            index_elements=[_EVENT.c.terminal_id, _EVENT.c.boot_id, _EVENT.c.seq]
        )
        rows = [_EVENTS.row(e) for e in events]
        for chunk in _chunks(rows):
            conn.execute(stmt, list(chunk))

    def _insert(self) -> Any:
        return sqlite.insert if self.dialect == "sqlite" else postgresql.insert

    def _upsert_terminals(
        self,
        conn: Connection,
        terminals: Sequence[TerminalView],
        now: datetime,
        gaps: Mapping[str, Gaps],
    ) -> None:
        insert = self._insert()
        stmt = insert(_TERMINAL)
        ahead = _not_behind(stmt.excluded)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_TERMINAL.c.id],
            set_={
                name: stmt.excluded[name]
                if name in _CONNECTIVITY_COLUMNS
                else sa.case((ahead, stmt.excluded[name]), else_=_TERMINAL.c[name])
                for name in _TERMINAL_UPDATE_COLUMNS
            },
            where=sa.or_(ahead, stmt.excluded.online != _TERMINAL.c.online),
        )
        rows = [
            _TERMINALS.row(v, updated_at=now, open_gaps=_gaps_json(gaps.get(v.id)))
            for v in terminals
        ]
        for chunk in _chunks(rows):
            conn.execute(stmt, list(chunk))

    def _update_positions(
        self, conn: Connection, terminals: Sequence[TerminalView], now: datetime
    ) -> bool:
        """Update the position columns of existing rows; False if some row did not exist."""
        return update_positions(conn, _TERMINAL, terminals, now, chunk=_CHUNK) == len(terminals)

    def _replace_peripherals(self, conn: Connection, batch: WriteBatch) -> None:
        ids = sorted(batch.peripheral_ids)
        for chunk in _chunks(ids):
            conn.execute(sa.delete(_PERIPHERAL).where(_PERIPHERAL.c.terminal_id.in_(chunk)))
        wanted = batch.peripheral_ids
        rows = [
            _PERIPHERALS.row(p, terminal_id=v.id)
            for v in batch.terminals
            if v.id in wanted
            for p in v.peripherals
        ]
        for chunk in _chunks(rows):
            conn.execute(sa.insert(_PERIPHERAL), list(chunk))


# --- row <-> view ---------------------------------------------------------------------------


def _db_text(value: str | None) -> str | None:
    """Device free text as the database can hold it: U+0000 becomes U+FFFD.

    The wire lets ``agent_version``, ``fault_code`` and ``detail`` carry U+0000;
    PostgreSQL text cannot, and a refused batch is retried whole, so one such
    message would stop every write. Done on SQLite too, so both store the same.
    """
    if value is None or _NUL not in value:
        return value
    return value.replace(_NUL, _REPLACEMENT)


def _json_text(value: Any) -> Any:
    """JSON as the database can hold it: U+0000 in any string becomes U+FFFD (see _db_text)."""
    if isinstance(value, str):
        return _db_text(value)
    if isinstance(value, Mapping):
        return {k: _json_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_text(v) for v in value]
    return value


def _enum_value(value: Any) -> Any:
    return None if value is None else value.value


def _offline_reason(value: str | None) -> OfflineReason | None:
    try:
        return None if value is None else OfflineReason(value)
    except ValueError:  # written by a newer server
        return OfflineReason.TIMEOUT


def _condition(value: str) -> PeripheralCondition:
    try:
        return PeripheralCondition(value)
    except ValueError:  # written by a newer server
        return PeripheralCondition.UNKNOWN


_T = TypeVar("_T")


@dataclass(frozen=True)
class _RowMapping(Generic[_T]):
    """How one read model (a frozen dataclass, where its fields are declared) maps onto one
    table: same names unless ``renamed``, values through ``store``/``load`` where given.

    ``unstored`` fields live elsewhere (a terminal's peripherals have their own table);
    ``table_only`` columns are not fields (surrogate ids, the owner's id, bookkeeping).
    Raises TypeError at import if a field has no column or a column no field.
    """

    table: sa.Table
    model: type[_T]
    renamed: Mapping[str, str] = field(default_factory=dict)
    store: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    load: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    unstored: frozenset[str] = frozenset()
    table_only: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        names = [f.name for f in fields(cast(Any, self.model)) if f.name not in self.unstored]
        columns = {self.renamed.get(n, n) for n in names}
        if columns | self.table_only != set(self.table.columns.keys()):
            raise TypeError(
                f"{self.model.__name__} does not match table {self.table.name}: fields"
                f" {sorted(columns - set(self.table.columns.keys()))} have no column, columns"
                f" {sorted(set(self.table.columns.keys()) - columns - self.table_only)} no field"
            )

    @functools.cached_property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(field, column) for every stored field."""
        return tuple(
            (f.name, self.renamed.get(f.name, f.name))
            for f in fields(cast(Any, self.model))
            if f.name not in self.unstored
        )

    @functools.cached_property
    def _writer(self) -> tuple[Callable[[Any], Any], tuple[str, ...], tuple[Any, ...]]:
        """What ``row`` runs: one getter for every stored field (``operator.attrgetter``,
        in C), the columns in the same order, and (column, encoder) for the encoded ones."""
        names = tuple(name for name, _ in self.pairs)
        columns = tuple(column for _, column in self.pairs)
        encoded = tuple(
            (column, self.store[name]) for name, column in self.pairs if name in self.store
        )
        getter = operator.attrgetter(*names)
        return (getter if len(names) > 1 else lambda obj: (getter(obj),)), columns, encoded

    def row(self, obj: _T, **table_only: Any) -> dict[str, Any]:
        """The row for ``obj`` (``table_only`` gives the columns that are not its fields)."""
        getter, columns, encoded = self._writer
        row = dict(table_only)
        row.update(zip(columns, getter(obj), strict=True))
        for column, encode in encoded:
            row[column] = encode(row[column])
        return row

    def model_of(self, row: Any, **unstored: Any) -> _T:
        """The read model a row holds (``unstored`` gives the fields stored elsewhere)."""
        values = dict(unstored)
        load = self.load
        for name, column in self.pairs:
            value = row[column]
            decode = load.get(name)
            values[name] = value if decode is None else decode(value)
        return self.model(**values)


_TERMINALS: Final = _RowMapping(
    _TERMINAL,
    TerminalView,
    renamed={"state_since": "online_since"},
    store={
        "offline_reason": _enum_value,
        "agent_version": _db_text,
        "software": dict,
    },
    load={
        "online": bool,
        "offline_reason": _offline_reason,
        "software": lambda value: dict(value or {}),
    },
    unstored=frozenset({"peripherals"}),
    table_only=frozenset({"updated_at", "open_gaps"}),
)
_PERIPHERALS: Final = _RowMapping(
    _PERIPHERAL,
    PeripheralView,
    store={
        "kind": _enum_value,
        "condition": _enum_value,
        "fault_code": _db_text,
        "detail": _db_text,
    },
    load={"kind": PeripheralKind, "condition": _condition},
    table_only=frozenset({"terminal_id"}),
)
_TRANSITIONS: Final = _RowMapping(
    _TRANSITION, Transition, store={"fault_code": _db_text}, table_only=frozenset({"id"})
)
_EVENTS: Final = _RowMapping(
    _EVENT,
    EventRecord,
    store={"body": _json_text},
    load={"body": lambda value: dict(value or {})},
    table_only=frozenset({"id"}),
)


def _peripheral_view(row: Any) -> PeripheralView | None:
    try:
        return _PERIPHERALS.model_of(row)
    except ValueError:  # a kind written by a newer server: this one cannot show it
        log.warning("skipping peripheral %r of unknown kind %r", row["name"], row["kind"])
        return None


# --- schema migrations ----------------------------------------------------------------------

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
_MIGRATION_LOCK: Final = 0x6B66_6D69_6772  # PostgreSQL advisory lock key held while migrating
BASELINE_REVISION: Final = "0001"
"""The schema as ``create_all`` made it before migrations existed (terminal, peripheral,
transition)."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the server's migrations (no alembic.ini needed).

    With ``connection``, ``env.py`` migrates over it instead of opening its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``. A database made by the old ``create_all``
    (the tables, no ``alembic_version``) is first stamped ``0001``. On PostgreSQL, servers
    starting together migrate one after the other (a transaction-scoped advisory lock).

    Raises SQLAlchemyError or alembic's CommandError (the caller translates them).
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        tables = set(sa.inspect(conn).get_table_names())
        config = alembic_config(conn)
        if "alembic_version" not in tables and "terminal" in tables:
            log.info("database created before migrations: stamping %s", BASELINE_REVISION)
            command.stamp(config, BASELINE_REVISION)
        command.upgrade(config, revision)
