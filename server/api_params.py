"""The query parameters the fleet routes share, as FastAPI dependencies: the terminal
list's filters (JSON and CSV), a history time range, a page cursor.

``?health=`` takes the values of ``server.health.Health`` (the metrics' vocabulary),
repeated or as a comma list; anything else is 422 naming the allowed values. ``since``
and ``until`` are RFC 3339 with an offset (``server.history_query.time_range``). Errors
are ``ApiError`` (the app turns them into its JSON error). No I/O.
"""

# No ``from __future__ import annotations``: FastAPI evaluates these annotations.
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query

from protocol.messages import PeripheralCondition, PeripheralKind, TerminalState
from server.errors import ApiError, InvalidCursorError, InvalidTimeRangeError
from server.fleet_views import TerminalFilter
from server.health import Health
from server.history_query import HistoryQuery, TimeRange, decode_position, time_range

__all__ = [
    "CursorParam",
    "TerminalFilterParams",
    "TimeRangeParams",
    "health_filter",
    "history_query",
]

_HEALTH_VALUES = ", ".join(h.value for h in Health)


def health_filter(values: list[str] | None) -> frozenset[Health] | None:
    """``?health=`` values (repeated or comma lists) as a set. Raises ApiError (422) naming
    the allowed values."""
    if not values:
        return None
    chosen: set[Health] = set()
    for value in values:
        for part in value.split(","):
            try:
                chosen.add(Health(part.strip()))
            except ValueError:
                message = f"health: {part.strip()!r} is not one of {_HEALTH_VALUES}"
                raise ApiError(422, "invalid_request", message) from None
    return frozenset(chosen)


def _time_window(
    since: Annotated[
        datetime | None, Query(description="RFC 3339 with an offset; inclusive (server time)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="RFC 3339 with an offset; exclusive, after since")
    ] = None,
) -> TimeRange:
    try:
        return time_range(since, until)
    except InvalidTimeRangeError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def _terminal_filter(
    region: str | None = None,
    hall: str | None = None,
    state: TerminalState | None = None,
    health: Annotated[
        list[str] | None,
        Query(
            description=f"one of {_HEALTH_VALUES}; repeat it or give a comma list for any"
            " of several"
        ),
    ] = None,
    peripheral_kind: PeripheralKind | None = None,
    condition: PeripheralCondition | None = None,
) -> TerminalFilter:
    """The list's filters (the JSON and the CSV list share them)."""
    return TerminalFilter(
        region=region,
        hall=hall,
        online=None if state is None else state is TerminalState.ONLINE,
        peripheral_kind=peripheral_kind,
        condition=condition,
        health=health_filter(health),
    )


TerminalFilterParams = Annotated[TerminalFilter, Depends(_terminal_filter)]
TimeRangeParams = Annotated[TimeRange, Depends(_time_window)]


CursorParam = Annotated[
    str | None, Query(max_length=200, description="next_cursor of the previous page")
]


def history_query(limit: int, window: TimeRange, cursor: str | None) -> HistoryQuery:
    """Raises ApiError (422) for a cursor this server did not hand out."""
    if cursor:
        try:
            decode_position(cursor)
        except InvalidCursorError as exc:
            raise ApiError(422, "invalid_request", f"cursor: {exc}") from None
    return HistoryQuery(limit=limit, window=window, cursor=cursor)
