"""The console's analytics page (viewer): for a range (default the last 7 days, whole UTC
hours as the API's), per hall its transactions, completion rate, utilisation, availability
of each service during opening hours, citizens estimated turned away, idle terminals; the
overloaded halls and the recommended moves with the figures they rest on; and a demand
heat map by hour of the week in each hall's own time zone (a hall's rows are placed with
the zone of its opening hours, UTC without; several halls add up local hour by local
hour), a plain table whose cells are shaded by class (no script, no outside asset).

The figures are the API's: the page calls the functions ``/api/v1/analytics/*`` answer
with (``server.analytics_api``'s ``*_public`` over ``server.analytics_report``), so the
page and the API show the same numbers for the same range. Every figure is by hall,
terminal or service, never by citizen. Never changes anything.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from server.access import Role
from server.analytics import GroupBy
from server.analytics_api import (
    AvailabilityItem,
    AvailabilityPublic,
    IdlePublic,
    TransactionsPublic,
    TurnedAwayPublic,
    UsePublic,
    UtilisationPublic,
    availability_public,
    transactions_public,
    turned_away_public,
    utilisation_public,
)
from server.analytics_report import AnalyticsRangeError, report_range
from server.console.web import (
    CONSOLE_PREFIX,
    ConsoleUser,
    _console,
    _form_time,
    _render,
    _unavailable,
    console_role,
)
from server.errors import ConsoleError, StorageError
from server.opening_hours import Weekday

__all__ = ["HEAT_LEVELS", "AnalyticsView", "HallFigures", "analytics_router", "analytics_view"]

HEAT_LEVELS: Final = 5
"""Shades of the heat map above empty (``heat-0`` .. ``heat-5`` in console.css)."""


@dataclass(slots=True)
class HallFigures:
    """One hall's line of the page."""

    hall: str
    transactions: int = 0
    completion_rate: float | None = None
    use: UsePublic | None = None
    overloaded: bool = False
    availability: list[AvailabilityItem] = field(default_factory=list)
    turned_away: float = 0.0  # estimated while a service was unavailable
    failed: int = 0  # transactions the terminals failed
    idle: list[IdlePublic] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AnalyticsView:
    """What the page shows, from the API's answers."""

    halls: list[HallFigures]
    utilisation: UtilisationPublic
    heat: list[tuple[str, list[tuple[int, int]]]]  # (weekday, [(transactions, level)] x 24)


def _heat(hours: TransactionsPublic) -> list[tuple[str, list[tuple[int, int]]]]:
    counts = {int(g.key): g.transactions for g in hours.groups}
    top = max(counts.values(), default=0)
    rows = []
    for day, weekday in enumerate(Weekday):
        cells = []
        for hour in range(24):
            n = counts.get(day * 24 + hour, 0)
            cells.append((n, math.ceil(HEAT_LEVELS * n / top) if n else 0))
        rows.append((weekday.value, cells))
    return rows


def analytics_view(
    by_hall: TransactionsPublic,
    use: UtilisationPublic,
    availability: AvailabilityPublic,
    away: TurnedAwayPublic,
    by_hour: TransactionsPublic,
) -> AnalyticsView:
    """The page's figures, arranged per hall (every hall any answer names, sorted)."""
    halls: defaultdict[str, HallFigures] = defaultdict(lambda: HallFigures(""))

    def hall(name: str) -> HallFigures:
        figures = halls[name]
        figures.hall = name
        return figures

    for g in by_hall.groups:
        h = hall(str(g.key))
        h.transactions, h.completion_rate = g.transactions, g.completion_rate
    overloaded = {u.hall for u in use.overloaded_halls}
    for u in use.halls:
        h = hall(u.hall)
        h.use, h.overloaded = u, u.hall in overloaded
    for item in availability.items:
        hall(item.hall).availability.append(item)
    for t in away.items:
        h = hall(t.hall)
        h.turned_away += t.estimated
        h.failed += sum(t.failed.values())
    for idle in use.idle_terminals:
        hall(idle.terminal.hall).idle.append(idle)
    return AnalyticsView([halls[k] for k in sorted(halls)], use, _heat(by_hour))


_Text = Annotated[str | None, Query(max_length=40)]


def analytics_router() -> APIRouter:
    """The analytics page's route (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    viewer = Annotated[ConsoleUser, Depends(console_role(Role.VIEWER))]

    @router.get(f"{CONSOLE_PREFIX}/analytics", name="console.analytics")
    def analytics_page(
        request: Request,
        who: viewer,
        since: _Text = None,
        until: _Text = None,
        hall: Annotated[str | None, Query(max_length=64)] = None,
    ) -> HTMLResponse:
        services = _console(request).services
        sources = services.analytics
        if sources is None:
            raise ConsoleError(404, "not_found", "this server has no analytics")
        try:
            r = report_range(_form_time(since), _form_time(until), services.clock())
        except AnalyticsRangeError as exc:
            raise ConsoleError(422, "invalid_request", str(exc)) from None
        heat_hall = hall or None
        try:
            view = analytics_view(
                transactions_public(sources, r, GroupBy.HALL),
                utilisation_public(sources, r),
                availability_public(sources, r),
                turned_away_public(sources, r),
                transactions_public(sources, r, GroupBy.HOUR_OF_WEEK, hall=heat_hall),
            )
        except StorageError as exc:
            raise _unavailable(exc) from None
        return _render(
            request, "analytics.html", who, view=view, span=r, heat_hall=heat_hall,
            since=r.since.strftime("%Y-%m-%dT%H:%M"), until=r.until.strftime("%Y-%m-%dT%H:%M"),
        )  # fmt: skip

    return router
