"""Service-demand analytics over the API (issue 14; viewer and up; docs/analytics.md).

- ``GET /api/v1/analytics/transactions?by=hall|terminal|service|hour_of_week``: counts by
  outcome and failure cause, completion rate, busy seconds and pages per group; filters
  ``hall``, ``terminal_id``, ``service``. ``hour_of_week`` is 0 (Monday 00:00) to 167 in
  each hall's own zone (its opening hours'; UTC without), ``server.analytics.hour_of_week``.
- ``GET /api/v1/analytics/utilisation``: busy over opening time per terminal and hall, the
  idle terminals, the overloaded halls and the recommended moves with their figures.
- ``GET /api/v1/analytics/availability``: per hall and service, the opening seconds and
  those with the service offerable.
- ``GET /api/v1/analytics/turned-away``: per hall and service, failed transactions by cause
  and the estimate of citizens turned away while the service was unavailable.

Every route takes ``since``/``until`` (RFC 3339; whole UTC hours, default the last 7
days: ``server.analytics_report``) and answers the range it used. An unknown query
parameter is 422 (``server.query_guard``), as everywhere. Every field of every answer is a
hall or terminal id, a catalogue code, an enum, a time or a number
(``tests/integration/test_analytics_e2e.py`` walks them). Never changes anything.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from server.access import Role
from server.access_api import require
from server.analytics import Figures, GroupBy, Move, TerminalUse
from server.analytics_report import AnalyticsRangeError, AnalyticsSources, Range, report_range
from server.api_params import TimeRangeParams
from server.errors import ApiError, StorageError
from server.history_query import TimeRange

__all__ = [
    "analytics_router",
    "availability_public",
    "transactions_public",
    "turned_away_public",
    "utilisation_public",
]


class RangePublic(BaseModel):
    since: datetime
    until: datetime


class GroupPublic(BaseModel):
    key: str | int
    transactions: int
    completed: int
    abandoned: int
    failed: dict[str, int]
    completion_rate: float | None
    busy_s: float
    pages: int


class TransactionsPublic(BaseModel):
    range: RangePublic
    by: GroupBy
    groups: list[GroupPublic]


class UsePublic(BaseModel):
    hall: str
    terminal_id: str | None
    terminals: int
    busy_s: float
    open_s: float
    utilisation: float | None


class IdlePublic(BaseModel):
    terminal: UsePublic
    hall_median: float


class MovePublic(BaseModel):
    source: str
    target: str
    terminals: int
    source_before: UsePublic
    source_after: UsePublic
    target_before: UsePublic
    target_after: UsePublic


class ThresholdsPublic(BaseModel):
    idle_share_of_median: float
    min_terminals_for_idle: int
    overloaded: float
    target: float
    min_open_s: float


class UtilisationPublic(BaseModel):
    range: RangePublic
    terminals: list[UsePublic]
    halls: list[UsePublic]
    idle_terminals: list[IdlePublic]
    overloaded_halls: list[UsePublic]
    recommendations: list[MovePublic]
    thresholds: ThresholdsPublic


class AvailabilityItem(BaseModel):
    hall: str
    service: str
    open_s: float
    available_s: float
    availability: float | None


class AvailabilityPublic(BaseModel):
    range: RangePublic
    items: list[AvailabilityItem]


class TurnedAwayItem(BaseModel):
    hall: str
    service: str
    failed: dict[str, int]
    unavailable_s: float
    estimated: float


class TurnedAwayPublic(BaseModel):
    range: RangePublic
    items: list[TurnedAwayItem]


def _use(u: TerminalUse) -> UsePublic:
    return UsePublic(
        hall=u.hall,
        terminal_id=u.terminal_id,
        terminals=u.terminals,
        busy_s=u.busy_s,
        open_s=u.open_s,
        utilisation=u.utilisation,
    )


def _group(f: Figures) -> GroupPublic:
    return GroupPublic(
        key=f.key,
        transactions=f.transactions,
        completed=f.completed,
        abandoned=f.abandoned,
        failed=dict(f.failed),
        completion_rate=f.completion_rate,
        busy_s=f.busy_s,
        pages=f.pages,
    )


def _move(m: Move) -> MovePublic:
    return MovePublic(
        source=m.source,
        target=m.target,
        terminals=m.terminals,
        source_before=_use(m.source_before),
        source_after=_use(m.source_after),
        target_before=_use(m.target_before),
        target_after=_use(m.target_after),
    )


def _range(r: Range) -> RangePublic:
    return RangePublic(since=r.since, until=r.until)


def transactions_public(
    sources: AnalyticsSources,
    r: Range,
    by: GroupBy,
    *,
    hall: str | None = None,
    terminal_id: str | None = None,
    service: str | None = None,
) -> TransactionsPublic:
    """The ``/transactions`` answer (the CLI prints it too). Raises StorageError."""
    groups = sources.transactions(r, by, hall=hall, terminal_id=terminal_id, service=service)
    return TransactionsPublic(range=_range(r), by=by, groups=[_group(g) for g in groups])


def utilisation_public(
    sources: AnalyticsSources, r: Range, *, hall: str | None = None
) -> UtilisationPublic:
    """The ``/utilisation`` answer. Raises StorageError."""
    u = sources.utilisation(r, hall=hall)
    t = u.thresholds
    return UtilisationPublic(
        range=_range(r),
        terminals=[_use(x) for x in u.terminals],
        halls=[_use(x) for x in u.halls],
        idle_terminals=[IdlePublic(terminal=_use(x), hall_median=m) for x, m in u.idle],
        overloaded_halls=[_use(x) for x in u.overloaded],
        recommendations=[_move(m) for m in u.moves],
        thresholds=ThresholdsPublic(
            idle_share_of_median=t.idle_share_of_median,
            min_terminals_for_idle=t.min_terminals_for_idle,
            overloaded=t.overloaded,
            target=t.target,
            min_open_s=t.min_open_s,
        ),
    )


def availability_public(
    sources: AnalyticsSources, r: Range, *, hall: str | None = None
) -> AvailabilityPublic:
    """The ``/availability`` answer. Raises StorageError."""
    return AvailabilityPublic(
        range=_range(r),
        items=[
            AvailabilityItem(
                hall=h,
                service=s,
                open_s=o,
                available_s=a,
                availability=a / o if o > 0 else None,
            )
            for h, s, o, a in sources.availability_shares(r, hall=hall)
        ],
    )


def turned_away_public(
    sources: AnalyticsSources, r: Range, *, hall: str | None = None
) -> TurnedAwayPublic:
    """The ``/turned-away`` answer. Raises StorageError."""
    return TurnedAwayPublic(
        range=_range(r),
        items=[
            TurnedAwayItem(
                hall=t.hall,
                service=t.service,
                failed=dict(t.failed),
                unavailable_s=t.unavailable_s,
                estimated=t.estimated,
            )
            for t in sources.turned_away(r, hall=hall)
        ],
    )


_Id = Annotated[str | None, Query(max_length=64)]


def analytics_router(sources: AnalyticsSources, clock: Callable[[], datetime]) -> APIRouter:
    """The routes above over ``sources``; ``clock`` gives "now" for an open ``until``."""
    router = APIRouter(
        prefix="/api/v1/analytics",
        tags=["analytics"],
        dependencies=[Depends(require(Role.VIEWER))],
    )

    def span(window: TimeRange) -> Range:
        try:
            return report_range(window.since, window.until, clock())
        except AnalyticsRangeError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None

    @router.get(
        "/transactions",
        response_model=TransactionsPublic,
        summary="Transactions, completion rate, busy time and pages by hall, terminal,"
        " service or hour of the week",
    )
    def transactions(
        window: TimeRangeParams,
        by: GroupBy = GroupBy.HALL,
        hall: _Id = None,
        terminal_id: _Id = None,
        service: _Id = None,
    ) -> TransactionsPublic:
        try:
            return transactions_public(
                sources, span(window), by, hall=hall, terminal_id=terminal_id, service=service
            )
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    @router.get(
        "/utilisation",
        response_model=UtilisationPublic,
        summary="Busy over opening time; idle terminals, overloaded halls, recommended moves",
    )
    def utilisation(window: TimeRangeParams, hall: _Id = None) -> UtilisationPublic:
        try:
            return utilisation_public(sources, span(window), hall=hall)
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    @router.get(
        "/availability",
        response_model=AvailabilityPublic,
        summary="Per hall and service: opening seconds, and those with the service offerable",
    )
    def availability(window: TimeRangeParams, hall: _Id = None) -> AvailabilityPublic:
        try:
            return availability_public(sources, span(window), hall=hall)
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    @router.get(
        "/turned-away",
        response_model=TurnedAwayPublic,
        summary="Per hall and service: failed transactions by cause and citizens estimated"
        " turned away while the service was unavailable",
    )
    def turned_away(window: TimeRangeParams, hall: _Id = None) -> TurnedAwayPublic:
        try:
            return turned_away_public(sources, span(window), hall=hall)
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    return router
