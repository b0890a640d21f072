"""An outbox file exactly as the schema-1 agent wrote it: what an upgraded agent finds on disk.

The DDL below is frozen: it is schema 1 as released (per-channel counter
columns in ``outbox_stream``), kept here so that the migration is always tested
from the real old shape, not from whatever the current code would create.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.codec import encode
from protocol.messages import SCHEMA_CHANNEL, Message
from protocol.topics import topic

__all__ = ["V1Row", "write_v1_outbox"]

_V1_SCHEMA = """
CREATE TABLE outbox_stream (
    terminal_id     TEXT PRIMARY KEY,
    boot_id         TEXT NOT NULL,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    reports         INTEGER NOT NULL DEFAULT 0,
    events          INTEGER NOT NULL DEFAULT 0,
    updates         INTEGER NOT NULL DEFAULT 0,
    dropped_reports INTEGER NOT NULL DEFAULT 0,
    over_quota      INTEGER NOT NULL DEFAULT 0,
    pending         INTEGER NOT NULL DEFAULT 0,
    pending_bytes   INTEGER NOT NULL DEFAULT 0,
    handed_through  INTEGER NOT NULL DEFAULT 0
);
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

_COLUMN = {"report": "reports", "event": "events", "update": "updates"}


@dataclass(frozen=True, slots=True)
class V1Row:
    """One pending message as schema 1 stored it."""

    channel: str
    seq: int
    topic: str
    payload: bytes

    @classmethod
    def of(cls, message: Message) -> V1Row:
        channel = SCHEMA_CHANNEL[message.schema_]
        return cls(channel.value, message.seq, topic(message.terminal_id, channel), encode(message))


def write_v1_outbox(
    path: Path,
    terminal_id: str,
    boot_id: str,
    pending: Sequence[V1Row],
    *,
    delivered: dict[str, int] | None = None,
    dropped_reports: int = 0,
) -> None:
    """A WAL-mode schema-1 file holding one stream with ``pending`` unsent rows.

    ``delivered`` adds messages that were sent and acknowledged earlier (counted,
    no longer stored), per channel.
    """
    counts = dict.fromkeys(_COLUMN.values(), 0)
    for channel, n in (delivered or {}).items():
        counts[_COLUMN[channel]] += n
    for row in pending:
        counts[_COLUMN[row.channel]] += 1
    last_seq = max((row.seq for row in pending), default=0)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        for statement in _V1_SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO outbox_stream (terminal_id, boot_id, last_seq, reports, events, updates,"
            " dropped_reports, pending, pending_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                terminal_id,
                boot_id,
                last_seq,
                counts["reports"],
                counts["events"],
                counts["updates"],
                dropped_reports,
                len(pending),
                sum(len(row.payload) for row in pending),
            ),
        )
        db.executemany(
            "INSERT INTO outbox_message (terminal_id, channel, seq, topic, payload, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(terminal_id, r.channel, r.seq, r.topic, r.payload, time.time()) for r in pending],
        )
        db.execute("PRAGMA user_version = 1")
        db.execute("COMMIT")
    finally:
        db.close()
