"""Which stored rows of one terminal a history or events read returns: a time range, a
page size and a cursor, and the page it gets back.

Rows come newest first by server time, ties by row id (both stored, so the order is
stable while rows are added: new rows sort before every cursor already handed out).
A cursor is the (server time, row id) of the previous page's last row, base64url-encoded
the same way as the terminal list's (``server.fleet_query``); one this server did not
hand out is refused with ``InvalidCursorError``. ``since`` is inclusive, ``until``
exclusive (as the audit log's). Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from server.errors import InvalidCursorError, InvalidTimeRangeError
from server.fleet_query import decode_cursor, encode_cursor

__all__ = [
    "HistoryQuery",
    "Position",
    "StoredPage",
    "TimeRange",
    "decode_position",
    "encode_position",
    "time_range",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Server time from ``since`` (inclusive) to ``until`` (exclusive); None: open. Aware UTC."""

    since: datetime | None = None
    until: datetime | None = None


def _aware_utc(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTimeRangeError(f"{name}: needs a UTC offset (RFC 3339), got {value}")
    return value.astimezone(UTC)


def time_range(since: datetime | None, until: datetime | None) -> TimeRange:
    """The range from ``since`` to ``until``. Raises InvalidTimeRangeError for a bound
    without an offset or ``since`` not before ``until``."""
    start, end = _aware_utc("since", since), _aware_utc("until", until)
    if start is not None and end is not None and start >= end:
        raise InvalidTimeRangeError(f"since ({start.isoformat()}) must be before until")
    return TimeRange(since=start, until=end)


@dataclass(frozen=True, slots=True)
class Position:
    """A row's place in newest-first order: its server time and row id."""

    at: datetime
    row_id: int


def encode_position(position: Position) -> str:
    return encode_cursor(f"{position.at.astimezone(UTC).isoformat()}|{position.row_id}")


def decode_position(cursor: str) -> Position:
    """The position in ``cursor``. Raises InvalidCursorError."""
    at_text, sep, id_text = decode_cursor(cursor).partition("|")
    try:
        at = datetime.fromisoformat(at_text)
        row_id = int(id_text)
    except ValueError:
        raise InvalidCursorError("cursor is not one this server handed out") from None
    if not sep or at.tzinfo is None or not id_text.isdigit():
        raise InvalidCursorError("cursor is not one this server handed out")
    return Position(at=at, row_id=row_id)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """At most ``limit`` rows in ``window``, after ``cursor`` (None: from the newest)."""

    limit: int
    window: TimeRange = TimeRange()
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("limit must be >= 1")

    def after(self) -> Position | None:
        """The cursor's position. Raises InvalidCursorError."""
        return decode_position(self.cursor) if self.cursor else None


@dataclass(frozen=True, slots=True)
class StoredPage(Generic[_T]):
    """One page of rows, newest first; ``next_cursor`` None on the last page."""

    items: tuple[_T, ...]
    next_cursor: str | None
