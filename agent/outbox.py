"""The agent's durable outbox: stream messages on disk until they are safe.

Every report, event and update status is appended here (one SQLite database
in WAL mode, stdlib ``sqlite3``) before it is handed to MQTT, and removed only
when the server confirmed its commit (``remove_through``: a ``kf.committed``
covers its seq and does not list it missing) or, with confirmations off, when its PUBACK arrives (``remove``). One file holds any number of terminals (the simulator
keeps all the terminals of a process in one file). Per terminal it keeps the
*stream*: the envelope's ``boot_id`` (drawn at random when the terminal's row
is first created) and the last ``seq`` assigned, so an agent restart or a
reboot continues the same ordered sequence.

Tables (schema version in ``PRAGMA user_version``, see docs/agent.md)::

    outbox_stream(terminal_id PK, boot_id, last_seq, dropped_reports, over_quota,
                  pending, pending_bytes, handed_through)
    outbox_count(terminal_id, channel, generated)   PK (terminal_id, channel)
    outbox_message(id INTEGER PRIMARY KEY AUTOINCREMENT, terminal_id, channel,
                   seq, topic, payload BLOB, created_at)   index (terminal_id, id)

``outbox_count.generated`` counts every stream message ever appended per
terminal and channel (a row per channel used, so a new channel needs no new
column); ``dropped_reports`` the reports deleted to keep the quota;
``pending``/``pending_bytes`` what is stored right now; ``handed_through`` the
highest row id ever handed to the connection (``mark_handed``, written before
the hand-over): such a row may have reached the broker, so it is never dropped
for the quota, not even by the next process.

An agent upgrade must not abandon its backlog: a file written by an older
schema is brought forward at open by the steps in ``_MIGRATIONS`` (one per
version, all in the open's single ``BEGIN IMMEDIATE`` transaction, so a
failure leaves the file exactly as the older agent wrote it), keeping every
message, ``boot_id`` and ``seq``. A file from a *newer* schema (an agent
rolled back after an upgrade) is left untouched and the open raises
``OutboxError``: it holds the newer agent's backlog, which this code cannot read.

The quota (``max_messages``, ``max_bytes`` per terminal) is enforced inside the
append's transaction: the terminal's OLDEST ``report`` rows not yet handed to
the connection are deleted and counted. Events and update statuses are never
dropped: if only they (or rows already in flight) remain, the new row is stored
beyond the quota and ``over_quota`` counts it (with a rate-limited warning).

A file that is not a valid outbox (corrupt: ``PRAGMA quick_check`` at open
reads every page; or tables that no outbox version has) is moved aside
to ``<name>.corrupt-<UTC timestamp>`` and a new one is created (new boot ids);
that is logged as an error. Every other ``sqlite3`` error becomes
``OutboxError`` (carrying ``.operation``). This module never talks to the
network and never decides what is sent or when.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from agent.errors import AgentError
from protocol.topics import Channel

__all__ = [
    "SCHEMA_VERSION",
    "STREAM_CHANNELS",
    "AppendResult",
    "Outbox",
    "OutboxError",
    "OutboxItem",
    "OutboxStats",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
_BUSY_TIMEOUT_S: Final = 10.0
_WARN_EVERY_S: Final = 60.0
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_MAX_INT: Final = 2**63 - 1  # SQLite's largest integer: "no bound" in a comparison
STREAM_CHANNELS: Final = frozenset({Channel.REPORT, Channel.EVENT, Channel.UPDATE, Channel.USAGE})
"""The channels whose messages go through the outbox (ordered, counted, never lost)."""

_SCHEMA: Final = """
CREATE TABLE outbox_stream (
    terminal_id     TEXT PRIMARY KEY,
    boot_id         TEXT NOT NULL,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    dropped_reports INTEGER NOT NULL DEFAULT 0,
    over_quota      INTEGER NOT NULL DEFAULT 0,
    pending         INTEGER NOT NULL DEFAULT 0,
    pending_bytes   INTEGER NOT NULL DEFAULT 0,
    handed_through  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE outbox_count (
    terminal_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    generated   INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, channel)
) WITHOUT ROWID;
CREATE TABLE outbox_message (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_at  REAL NOT NULL
);
CREATE INDEX outbox_message_terminal ON outbox_message (terminal_id, id);
"""

_EXPECTED_COLUMNS: Final = {
    "outbox_stream": [
        "terminal_id",
        "boot_id",
        "last_seq",
        "dropped_reports",
        "over_quota",
        "pending",
        "pending_bytes",
        "handed_through",
    ],
    "outbox_count": ["terminal_id", "channel", "generated"],
    "outbox_message": ["id", "terminal_id", "channel", "seq", "topic", "payload", "created_at"],
}
"""The tables and columns of the current schema, in order: what the open checks."""


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Per-channel counter columns of ``outbox_stream`` become rows of ``outbox_count``."""
    db.execute(
        "CREATE TABLE outbox_count (terminal_id TEXT NOT NULL, channel TEXT NOT NULL,"
        " generated INTEGER NOT NULL, PRIMARY KEY (terminal_id, channel)) WITHOUT ROWID"
    )
    for channel, column in (("report", "reports"), ("event", "events"), ("update", "updates")):
        db.execute(
            f"INSERT INTO outbox_count (terminal_id, channel, generated)"  # noqa: S608 - constants
            f" SELECT terminal_id, ?, {column} FROM outbox_stream WHERE {column} > 0",
            (channel,),
        )
        db.execute(f"ALTER TABLE outbox_stream DROP COLUMN {column}")


_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {1: _v1_to_v2}
"""``from_version -> step`` bringing a file one version forward. Each step is written once,
against the schema of its version, and never changed afterwards; a schema change adds
the next step and raises SCHEMA_VERSION."""


class OutboxError(AgentError):
    """The outbox database failed (disk full, I/O error, read-only, locked too long), or the
    file was written by a newer agent (``operation`` ``open``).

    ``operation`` names what was being done (``open``, ``migrate``, ``append``, ``peek``,
    ``remove``, ``stream``, ``stats``); the ``sqlite3`` error is the cause.
    """

    def __init__(self, operation: str, cause: BaseException) -> None:
        super().__init__(f"outbox {operation} failed: {cause}")
        self.operation = operation
        self.cause = cause


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """One terminal's stream as stored: cumulative counters and what is pending now.

    ``generated`` counts the messages ever appended per channel (absent: none).
    """

    boot_id: str
    last_seq: int
    generated: Mapping[Channel, int]
    dropped_reports: int
    pending: int
    over_quota: int = 0
    pending_bytes: int = 0

    @property
    def reports(self) -> int:
        return self.generated.get(Channel.REPORT, 0)

    @property
    def events(self) -> int:
        return self.generated.get(Channel.EVENT, 0)

    @property
    def updates(self) -> int:
        return self.generated.get(Channel.UPDATE, 0)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One stored message, as ``peek`` returns it."""

    id: int
    channel: Channel
    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one ``append`` did.

    ``id`` is the new row's id, or None if the row itself was dropped at once
    (a report that was the oldest report left when the quota was exceeded).
    ``dropped_ids`` are the report rows deleted for the quota (the new row's id
    among them when ``id`` is None); ``over_quota`` is true when the row was
    stored beyond the quota because only events, updates or rows in flight remained.
    """

    id: int | None
    dropped_ids: tuple[int, ...] = ()
    over_quota: bool = False


class Outbox:
    """The on-disk queue; see the module docstring. Thread-safe (one lock per instance)."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Literal["full", "normal"] = "full",
        max_messages: int = 10_000,
        max_bytes: int = 16 * 2**20,
    ) -> None:
        """Open (or create) the outbox at ``path``; ``":memory:"`` keeps it in memory.

        A corrupt or foreign file is moved aside and replaced (logged as an
        error). Raises OutboxError if the file cannot be opened or created
        (unwritable directory, disk full, I/O error), ValueError for bad limits.
        """
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self.path = path if path == ":memory:" else Path(path)
        self.synchronous = synchronous
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._last_warning = -_WARN_EVERY_S
        self._closed = False
        self._db = self._open()

    @classmethod
    def in_memory(cls, **limits: Any) -> Outbox:
        """An outbox that lives only in this process (tests, or no usable disk)."""
        return cls(":memory:", **limits)

    @property
    def durable(self) -> bool:
        """False for an in-memory outbox: nothing survives the process."""
        return self.path != ":memory:"

    # -- opening -----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if isinstance(self.path, Path):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutboxError("open", exc) from exc
        try:
            return self._connect_and_check()
        except _NotAnOutboxError as exc:
            if not isinstance(self.path, Path):  # pragma: no cover - memory is always fresh
                raise OutboxError("open", exc) from exc
            aside = self._move_aside()
            log.error(
                "outbox %s is not a valid outbox (%s); moved it to %s and started a new one "
                "(new boot ids: the server will see new streams)",
                self.path,
                exc,
                aside,
            )
            try:
                return self._connect_and_check()
            except _NotAnOutboxError as again:
                raise OutboxError("open", again) from again

    def _connect_and_check(self) -> sqlite3.Connection:
        target = str(self.path)
        try:
            db = sqlite3.connect(
                target, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError("open", exc) from exc
        try:
            self._prepare(db)
        except _NotAnOutboxError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            if _is_corruption(exc):
                raise _NotAnOutboxError(str(exc)) from exc
            raise OutboxError("open", exc) from exc
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        if self.durable:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        db.execute("BEGIN IMMEDIATE")
        try:
            self._bring_to_current_schema(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        # A damaged page behind an intact schema would otherwise fail every later
        # read (the agent could not even start): read every page now. Outside the
        # write lock: in WAL mode it does not hold up a process writing this file.
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise _NotAnOutboxError("quick_check: " + "; ".join(map(str, problems)))

    def _bring_to_current_schema(self, db: sqlite3.Connection) -> None:
        """Create, check or migrate the schema inside the open's transaction (see the docstring).

        Raises _NotAnOutboxError for tables no outbox version has, OutboxError for a
        newer version or a migration step that fails (the transaction then rolls back).
        """
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            row[0]
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if version == 0 and not tables:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if version > SCHEMA_VERSION:
            raise OutboxError(
                "open",
                sqlite3.DatabaseError(
                    f"schema version {version} was written by a newer agent (this one reads up "
                    f"to {SCHEMA_VERSION}); the file is left as it is"
                ),
            )
        if version not in _MIGRATIONS and version != SCHEMA_VERSION:
            raise _NotAnOutboxError(f"schema version {version}, expected {SCHEMA_VERSION}")
        start = version
        while version < SCHEMA_VERSION:
            try:
                _MIGRATIONS[version](db)
            except sqlite3.Error as exc:
                if _is_corruption(exc):
                    raise
                raise OutboxError("migrate", exc) from exc
            version += 1
        for table, columns in _EXPECTED_COLUMNS.items():
            found = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            if found != columns:
                raise _NotAnOutboxError(f"table {table} has columns {found}")
        if start != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("outbox %s migrated from schema %d to %d", self.path, start, SCHEMA_VERSION)

    def _move_aside(self) -> Path:
        assert isinstance(self.path, Path)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(aside.with_name(aside.name + suffix))
        except OSError as exc:
            raise OutboxError("open", exc) from exc
        return aside

    # -- the API -----------------------------------------------------------------

    def stream(self, terminal_id: str) -> OutboxStats:
        """The terminal's stream, created (with a new random boot_id) if missing.

        Raises OutboxError.
        """
        with self._transaction("stream") as db:
            stats = self._stream_row(db, terminal_id)
            if stats is None:
                db.execute(
                    "INSERT INTO outbox_stream (terminal_id, boot_id) VALUES (?, ?)",
                    (terminal_id, str(uuid.uuid4())),
                )
                stats = self._stream_row(db, terminal_id)
            assert stats is not None
            return stats

    def stats(self, terminal_id: str) -> OutboxStats:
        """The terminal's stream as stored now. Raises KeyError if it has none, OutboxError."""
        with self._transaction("stats", write=False) as db:
            stats = self._stream_row(db, terminal_id)
        if stats is None:
            raise KeyError(terminal_id)
        return stats

    def terminals(self) -> list[str]:
        """Every terminal with a stream in this file. Raises OutboxError."""
        with self._transaction("stats", write=False) as db:
            return [r[0] for r in db.execute("SELECT terminal_id FROM outbox_stream ORDER BY 1")]

    def append(
        self,
        terminal_id: str,
        channel: Channel,
        seq: int,
        topic: str,
        payload: bytes,
        *,
        handed_through: int = 0,
    ) -> AppendResult:
        """Store one stream message in one transaction, set ``last_seq``, count it, keep the quota.

        Rows up to ``handed_through`` (or up to the stored ``mark_handed``
        value, whichever is higher) may be in flight and are never dropped for
        the quota.
        Raises OutboxError (the message is then not stored), ValueError for a
        channel that is not a stream channel.
        """
        if channel not in STREAM_CHANNELS:
            raise ValueError(f"{channel.value} messages do not go through the outbox")
        size = len(payload)
        with self._transaction("append") as db:
            db.execute(
                "INSERT INTO outbox_stream (terminal_id, boot_id) VALUES (?, ?)"
                " ON CONFLICT (terminal_id) DO NOTHING",
                (terminal_id, str(uuid.uuid4())),
            )
            cur = db.execute(
                "INSERT INTO outbox_message (terminal_id, channel, seq, topic, payload, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (terminal_id, channel.value, seq, topic, payload, time.time()),
            )
            new_id = cur.lastrowid
            assert new_id is not None
            pending, pending_bytes = db.execute(
                "UPDATE outbox_stream SET last_seq = max(last_seq, ?), pending = pending + 1,"
                " pending_bytes = pending_bytes + ? WHERE terminal_id = ?"
                " RETURNING pending, pending_bytes",
                (seq, size, terminal_id),
            ).fetchone()
            db.execute(
                "INSERT INTO outbox_count (terminal_id, channel, generated) VALUES (?, ?, 1)"
                " ON CONFLICT (terminal_id, channel) DO UPDATE SET generated = generated + 1",
                (terminal_id, channel.value),
            )
            dropped: list[int] = []
            over = False
            if pending > self.max_messages or pending_bytes > self.max_bytes:
                stored = db.execute(
                    "SELECT handed_through FROM outbox_stream WHERE terminal_id = ?",
                    (terminal_id,),
                ).fetchone()[0]
                dropped, freed = self._drop_reports(
                    db, terminal_id, pending, pending_bytes, max(handed_through, stored)
                )
                pending -= len(dropped)
                pending_bytes -= freed
                if pending > self.max_messages or pending_bytes > self.max_bytes:
                    over = True
                db.execute(
                    "UPDATE outbox_stream SET dropped_reports = dropped_reports + ?,"
                    " over_quota = over_quota + ?, pending = ?, pending_bytes = ?"
                    " WHERE terminal_id = ?",
                    (len(dropped), int(over), pending, pending_bytes, terminal_id),
                )
        if over:
            self._warn_over_quota(terminal_id, pending, pending_bytes)
        return AppendResult(
            id=None if new_id in dropped else new_id,
            dropped_ids=tuple(dropped),
            over_quota=over,
        )

    def mark_handed(self, terminal_id: str, through_id: int) -> None:
        """Record that rows up to ``through_id`` are being handed to the connection.

        Call it before the hand-over: those rows are then never dropped for the
        quota (the broker may have them). Raises OutboxError.
        """
        with self._transaction("mark_handed") as db:
            db.execute(
                "UPDATE outbox_stream SET handed_through = max(handed_through, ?)"
                " WHERE terminal_id = ?",
                (through_id, terminal_id),
            )

    def peek(
        self,
        terminal_id: str,
        after_id: int,
        limit: int,
        *,
        through_id: int | None = None,
        through_seq: int | None = None,
    ) -> list[OutboxItem]:
        """Up to ``limit`` of the terminal's rows with an id above ``after_id``, oldest first;
        only those with an id at or below ``through_id`` and a seq at or below
        ``through_seq`` when given. Raises OutboxError.
        """
        if limit <= 0:
            return []
        with self._transaction("peek", write=False) as db:
            rows = db.execute(
                "SELECT id, channel, seq, topic, payload FROM outbox_message"
                " WHERE terminal_id = ? AND id > ? AND id <= ? AND seq <= ? ORDER BY id LIMIT ?",
                (
                    terminal_id,
                    after_id,
                    _MAX_INT if through_id is None else through_id,
                    _MAX_INT if through_seq is None else through_seq,
                    limit,
                ),
            ).fetchall()
        return [OutboxItem(r[0], Channel(r[1]), r[2], r[3], bytes(r[4])) for r in rows]

    def remove(self, terminal_id: str, ids: Sequence[int]) -> None:
        """Delete the terminal's rows ``ids`` (acknowledged); ids already gone are ignored.

        Raises OutboxError.
        """
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._transaction("remove") as db:
            sql = f"DELETE FROM outbox_message WHERE terminal_id = ? AND id IN ({marks}) RETURNING length(payload)"  # noqa: S608 - only '?' marks; values are bound
            _uncount(db, terminal_id, db.execute(sql, (terminal_id, *ids)).fetchall())

    def remove_through(
        self, terminal_id: str, seq: int, keep: Sequence[tuple[int, int]] = ()
    ) -> int:
        """Delete the terminal's rows with a seq at or below ``seq`` (the server committed
        them: ``kf.committed``) except those in a ``keep`` range ``(first, last)`` (the
        server misses them: to be re-sent); returns how many were deleted. Raises
        OutboxError."""
        spare = "".join(" AND seq NOT BETWEEN ? AND ?" for _ in keep)
        with self._transaction("remove") as db:
            gone = db.execute(
                "DELETE FROM outbox_message WHERE terminal_id = ? AND seq <= ?"  # noqa: S608 - only '?' marks; values are bound
                + spare
                + " RETURNING length(payload)",
                (terminal_id, seq, *(bound for r in keep for bound in r)),
            ).fetchall()
            _uncount(db, terminal_id, gone)
        return len(gone)

    def close(self) -> None:
        """Close the database (idempotent); a WAL checkpoint happens on the last close."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, operation: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise OutboxError(operation, sqlite3.ProgrammingError("the outbox is closed"))
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise OutboxError(operation, exc) from exc
            try:
                yield db
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise OutboxError(operation, exc) from exc
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    @staticmethod
    def _stream_row(db: sqlite3.Connection, terminal_id: str) -> OutboxStats | None:
        row = db.execute(
            "SELECT boot_id, last_seq, dropped_reports, pending, over_quota, pending_bytes"
            " FROM outbox_stream WHERE terminal_id = ?",
            (terminal_id,),
        ).fetchone()
        if row is None:
            return None
        boot_id, last_seq, dropped, pending, over, pending_bytes = row
        counts = db.execute(
            "SELECT channel, generated FROM outbox_count WHERE terminal_id = ?", (terminal_id,)
        )
        return OutboxStats(
            boot_id=boot_id,
            last_seq=last_seq,
            generated={Channel(channel): n for channel, n in counts},
            dropped_reports=dropped,
            pending=pending,
            over_quota=over,
            pending_bytes=pending_bytes,
        )

    def _drop_reports(
        self,
        db: sqlite3.Connection,
        terminal_id: str,
        pending: int,
        pending_bytes: int,
        handed_through: int,
    ) -> tuple[list[int], int]:
        """Delete the oldest report rows (not in flight) until the quota holds, if it can."""
        dropped: list[int] = []
        freed = 0
        cursor = db.execute(
            "SELECT id, length(payload) FROM outbox_message WHERE terminal_id = ?"
            " AND channel = ? AND id > ? ORDER BY id",
            (terminal_id, Channel.REPORT.value, handed_through),
        )
        for row_id, size in cursor:
            if pending - len(dropped) <= self.max_messages and (
                pending_bytes - freed <= self.max_bytes
            ):
                break
            dropped.append(row_id)
            freed += size
        cursor.close()
        for start in range(0, len(dropped), 500):
            chunk = dropped[start : start + 500]
            sql = f"DELETE FROM outbox_message WHERE id IN ({','.join('?' * len(chunk))})"  # noqa: S608 - only '?' marks; values are bound
            db.execute(sql, chunk)
        return dropped, freed

    def _warn_over_quota(self, terminal_id: str, pending: int, pending_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "%s: outbox over its quota (%d messages, %d bytes; limits %d, %d): only events, "
                "update statuses or messages in flight are left, and those are never dropped",
                terminal_id,
                pending,
                pending_bytes,
                self.max_messages,
                self.max_bytes,
            )


def _uncount(db: sqlite3.Connection, terminal_id: str, gone: list[Any]) -> None:
    """Take deleted rows (their ``length(payload)``) off the stream's pending counters."""
    if gone:
        db.execute(
            "UPDATE outbox_stream SET pending = pending - ?,"
            " pending_bytes = pending_bytes - ? WHERE terminal_id = ?",
            (len(gone), sum(r[0] for r in gone), terminal_id),
        )


class _NotAnOutboxError(Exception):
    """The file is corrupt or has another schema (internal: leads to move-aside)."""


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text
