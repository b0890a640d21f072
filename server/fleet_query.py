"""Filtered, cursor-paginated reads over the fleet's records.

``page`` walks the terminals in id order, keeps those that match a
``TerminalFilter`` and returns at most ``limit`` of them after a cursor. A
cursor is the last id of the previous page, base64url-encoded; one this server
did not hand out is refused with ``InvalidCursorError``. No lock (the caller
holds one), no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping

from server.errors import InvalidCursorError
from server.fleet_views import OfflineReason, Page, TerminalFilter, TerminalView
from server.health import Health, closed_or, terminal_health
from server.terminal_rules import TerminalRecord

__all__ = ["decode_cursor", "encode_cursor", "matching", "page"]


def encode_cursor(terminal_id: str) -> str:
    return base64.urlsafe_b64encode(terminal_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The terminal id in ``cursor``. Raises InvalidCursorError."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        terminal_id = decoded.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidCursorError("cursor is not one this server handed out") from None
    if not terminal_id or encode_cursor(terminal_id) != cursor:
        raise InvalidCursorError("cursor is not one this server handed out")
    return terminal_id


def matching(records: Iterable[TerminalRecord], flt: TerminalFilter) -> Iterator[TerminalRecord]:
    """The records that match every field ``flt`` sets (kind and condition: one peripheral;
    health: one of the set)."""
    for t in records:
        if flt.region is not None and t.region != flt.region:
            continue
        if flt.hall is not None and t.hall != flt.hall:
            continue
        if flt.online is not None and t.online is not flt.online:
            continue
        if flt.health is not None and _health(t, flt.closed_halls) not in flt.health:
            continue
        if (flt.peripheral_kind is not None or flt.condition is not None) and not any(
            (flt.peripheral_kind is None or p.kind is flt.peripheral_kind)
            and (flt.condition is None or p.condition is flt.condition)
            for p in t.peripherals.values()
        ):
            continue
        yield t


def _health(t: TerminalRecord, closed_halls: frozenset[str | None]) -> Health:
    health = terminal_health(t.online, ((p.kind, p.condition) for p in t.peripherals.values()))
    return closed_or(
        health,
        clean_shutdown=t.offline_reason is OfflineReason.SHUTDOWN,
        hall_open=t.hall not in closed_halls,
    )


def page(
    records: Mapping[str, TerminalRecord],
    sorted_ids: Iterable[str],
    flt: TerminalFilter,
    *,
    limit: int,
    cursor: str | None = None,
) -> Page:
    """Records matching ``flt`` in ``sorted_ids`` order, at most ``limit``, after ``cursor``.

    Raises InvalidCursorError for a cursor this server did not produce, ValueError for
    a limit below 1.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    after = decode_cursor(cursor) if cursor else None
    total = 0
    items: list[TerminalView] = []
    more = False
    for t in matching((records[tid] for tid in sorted_ids), flt):
        total += 1
        if after is not None and t.id <= after:
            continue
        if len(items) < limit:
            items.append(t.view())
        else:
            more = True
    next_cursor = encode_cursor(items[-1].id) if more and items else None
    return Page(items=tuple(items), total=total, next_cursor=next_cursor)
