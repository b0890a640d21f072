"""A hall's opening hours over the API (issue 11): when its terminals may install.

- ``PUT /api/v1/halls/{hall}/opening-hours`` sets (replaces) the hall's hours: an
  operator's change, audited by the API's middleware as ``hall.hours.set``;
- ``GET /api/v1/halls/{hall}/opening-hours`` reads them (viewer);
- ``GET /api/v1/halls/{hall}/open?at=...`` whether the hall is open at ``at`` (an ISO-8601
  time with its offset; now if left out) and its next closed window (viewer).

The body is ``server.opening_hours.OpeningHours``; bad hours are refused with 422 and
the reason. A hall without hours answers 404 ``no_opening_hours``.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from server.access import Principal, Role
from server.access_api import require
from server.errors import ApiError, StorageError, TooManyHallsError
from server.opening_hours import OpeningHours, is_open, next_closed_window
from server.opening_hours_store import HallHours, OpeningHoursStore

__all__ = ["opening_hours_router"]

_HALL = Annotated[str, Path(min_length=1, max_length=64)]


class HallHoursPublic(BaseModel):
    hall: str
    hours: OpeningHours
    updated_at: datetime
    updated_by: str = Field(description="who set them: token:<name> or cli:<user>")


class ClosedWindowPublic(BaseModel):
    start: datetime = Field(description="now if closed now, else when the current opening ends")
    end: datetime | None = Field(description="the next opening; null: none within 400 days")


class OpenPublic(BaseModel):
    hall: str
    at: datetime
    open: bool
    closed_window: ClosedWindowPublic | None = Field(
        description="the next window terminals may install in; null: never closed (400 days)"
    )


def _public(found: HallHours) -> HallHoursPublic:
    return HallHoursPublic(
        hall=found.hall,
        hours=found.hours,
        updated_at=found.updated_at,
        updated_by=found.updated_by,
    )


@contextmanager
def _answered() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        raise ApiError(503, "database_unavailable", str(exc)) from None
    except TooManyHallsError as exc:
        raise ApiError(409, "too_many_halls", str(exc)) from None


def opening_hours_router(
    store: OpeningHoursStore,
    clock: Callable[[], datetime],
    *,
    on_change: Callable[[], None] = lambda: None,
) -> APIRouter:
    """The routes above over ``store``; ``clock`` is now (aware) when ``at`` is left out;
    ``on_change`` is called after hours were stored (the metrics' cache reloads them)."""
    router = APIRouter(prefix="/api/v1/halls", tags=["halls"])
    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

    def stored(hall: str) -> HallHours:
        with _answered():
            found = store.get(hall)
        if found is None:
            raise ApiError(404, "no_opening_hours", f"hall {hall!r} has no opening hours")
        return found

    @router.put(
        "/{hall}/opening-hours",
        response_model=HallHoursPublic,
        name="hall.hours.set",
        summary="Set (replace) the hall's weekly opening hours and holidays",
    )
    def set_hours(hall: _HALL, body: OpeningHours, who: operator) -> HallHoursPublic:
        with _answered():
            stored_hours = store.put(hall, body, actor=who.actor, now=clock())
        on_change()
        return _public(stored_hours)

    @router.get(
        "/{hall}/opening-hours",
        response_model=HallHoursPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="The hall's opening hours",
    )
    def get_hours(hall: _HALL) -> HallHoursPublic:
        return _public(stored(hall))

    @router.get(
        "/{hall}/open",
        response_model=OpenPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="Whether the hall is open at a time, and its next closed window",
    )
    def hall_open(
        hall: _HALL,
        at: Annotated[
            datetime | None, Query(description="ISO-8601 with an offset; now if left out")
        ] = None,
    ) -> OpenPublic:
        when = clock() if at is None else at
        if when.tzinfo is None or when.utcoffset() is None:
            raise ApiError(422, "invalid_time", f"{at} has no UTC offset (add Z or +01:00)")
        hours = stored(hall).hours
        window = next_closed_window(hours, when)
        return OpenPublic(
            hall=hall,
            at=when,
            open=is_open(hours, when),
            closed_window=None
            if window is None
            else ClosedWindowPublic(start=window[0], end=window[1]),
        )

    return router
