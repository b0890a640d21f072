"""The analytics figures of a time range, read from the rollups (docs/analytics.md): what
the API (``server.analytics_api``), the metrics (``server.analytics_metrics``) and the CLI
show, computed by ``server.analytics`` from ``AnalyticsSources``.

A range is whole UTC hours: ``since`` is rounded down and ``until`` up to the hour (the
rollups' resolution); an open ``since`` is ``until`` less ``DEFAULT_SPAN`` (7 days), an
open ``until`` is now. A hall's opening seconds in the range come from its opening hours;
a hall without hours is open around the clock (as for alerts). The terminals are the
fleet's now, each in its hall (``unknown`` without one), so a terminal with no transaction
counts as 0 busy, and one no longer in the fleet still counts where its rows say.
Hours of the week are each hall's own: its rows are placed with the zone of its opening
hours (``zones``; UTC for a hall without hours), for ``by=hour_of_week`` and for the
turned-away estimate's demand per hour of the week.

Raises StorageError from the sources. No I/O of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from server.analytics import (
    Figures,
    GroupBy,
    HourlyUsage,
    Move,
    TerminalUse,
    Thresholds,
    TurnedAway,
    Zones,
    figures,
    hour_start,
    idle_terminals,
    overloaded_halls,
    recommend,
    turned_away,
    utilisation,
)
from server.errors import ServerError
from server.opening_hours import OpeningHours, open_seconds

__all__ = [
    "DEFAULT_SPAN",
    "MAX_SPAN",
    "AnalyticsRangeError",
    "AnalyticsSources",
    "Range",
    "Utilisation",
    "report_range",
]

DEFAULT_SPAN: Final = timedelta(days=7)
# A caller's range is bounded: the figures walk each hall's opening hours day by day and
# read every rollup row of the range, so an unbounded one is a way to burn the server.
MAX_SPAN: Final = timedelta(days=93)
_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
_HOUR: Final = timedelta(hours=1)
DEFAULT_THRESHOLDS: Final = Thresholds()


@dataclass(frozen=True, slots=True)
class Range:
    since: datetime
    until: datetime


class AnalyticsRangeError(ServerError, ValueError):
    """A range the analytics refuse: longer than MAX_SPAN, ending before it starts, or
    outside 2000-2100. The API and the console answer 422 with the message."""


def report_range(since: datetime | None, until: datetime | None, now: datetime) -> Range:
    """Whole UTC hours covering ``[since, until)`` (defaults above). Raises
    AnalyticsRangeError for a range it refuses."""
    for given in (since, until):
        if given is not None and not _EARLIEST <= given <= _LATEST:
            raise AnalyticsRangeError("since and until must lie between 2000 and 2100")
    end = until if until is not None else now
    end_hour = hour_start(end)
    if end_hour < end:
        end_hour += _HOUR
    start = since if since is not None else end_hour - DEFAULT_SPAN
    r = Range(hour_start(start), end_hour)
    if r.until <= r.since:
        raise AnalyticsRangeError("until must be after since")
    if r.until - r.since > MAX_SPAN:
        raise AnalyticsRangeError(f"a range is at most {MAX_SPAN.days} days")
    return r


@dataclass(frozen=True, slots=True)
class Utilisation:
    terminals: list[TerminalUse]
    halls: list[TerminalUse]
    idle: list[tuple[TerminalUse, float]]
    overloaded: list[TerminalUse]
    moves: list[Move]
    thresholds: Thresholds


@dataclass(frozen=True, slots=True)
class AnalyticsSources:
    """Where the figures come from (the server wires the real stores; tests may pass lists).

    ``rows(since, until, hall, terminal_id, service)``: rollup rows; ``availability(since,
    until, hall)``: (hall, service, hour) → (open s, available s); ``hours()``: hall →
    opening hours; ``terminals()``: terminal id → hall, the fleet now."""

    rows: Callable[[datetime, datetime, str | None, str | None, str | None], list[HourlyUsage]]
    availability: Callable[
        [datetime, datetime, str | None], Mapping[tuple[str, str, datetime], tuple[float, float]]
    ]
    hours: Callable[[], Mapping[str, OpeningHours]]
    terminals: Callable[[], Mapping[str, str]]
    thresholds: Thresholds = DEFAULT_THRESHOLDS

    def transactions(
        self,
        r: Range,
        by: GroupBy,
        *,
        hall: str | None = None,
        terminal_id: str | None = None,
        service: str | None = None,
    ) -> list[Figures]:
        rows = self.rows(r.since, r.until, hall, terminal_id, service)
        return figures(rows, by, self.zones() if by is GroupBy.HOUR_OF_WEEK else None)

    def zones(self) -> Zones:
        """Each hall's zone, from its opening hours (a hall without hours: UTC)."""
        return {hall: hours.zone for hall, hours in self.hours().items()}

    def open_s(self, r: Range, halls: set[str]) -> dict[str, float]:
        """Opening seconds of each hall in the range (around the clock without hours)."""
        hours = self.hours()
        span = (r.until - r.since).total_seconds()
        return {h: open_seconds(hours[h], r.since, r.until) if h in hours else span for h in halls}

    def utilisation(self, r: Range, *, hall: str | None = None) -> Utilisation:
        rows = self.rows(r.since, r.until, hall, None, None)
        terminals = {t: h for t, h in self.terminals().items() if hall is None or h == hall}
        halls = set(terminals.values()) | {row.hall for row in rows}
        per_terminal, per_hall = utilisation(rows, terminals, self.open_s(r, halls))
        return Utilisation(
            per_terminal,
            per_hall,
            idle_terminals(per_terminal, self.thresholds),
            overloaded_halls(per_hall, self.thresholds),
            recommend(per_hall, self.thresholds),
            self.thresholds,
        )

    def turned_away(self, r: Range, *, hall: str | None = None) -> list[TurnedAway]:
        rows = self.rows(r.since, r.until, hall, None, None)
        return turned_away(rows, self.availability(r.since, r.until, hall), self.zones())

    def availability_shares(
        self, r: Range, *, hall: str | None = None
    ) -> list[tuple[str, str, float, float]]:
        """(hall, service, open s, available s) summed over the range, sorted."""
        sums: dict[tuple[str, str], list[float]] = {}
        for (h, s, _hour), (o, a) in self.availability(r.since, r.until, hall).items():
            acc = sums.setdefault((h, s), [0.0, 0.0])
            acc[0] += o
            acc[1] += a
        return [(h, s, o, a) for (h, s), (o, a) in sorted(sums.items())]
