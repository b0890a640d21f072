"""A terminal's paper forecast over the API (issue 14, item 4).

``GET /api/v1/terminals/{terminal_id}/paper`` (viewer): the forecast of the terminal's
printer at the last refresh (``server.paper_tracker``; every ``paper_forecast_interval_s``),
``forecast: null`` while the paper level is unknown (no refill or ``paper_low`` seen since
the server started) or the history is shorter than an hour; 404 for a terminal the server
does not know. The times are seconds from ``computed_at``.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel

from server.access import Role
from server.access_api import require
from server.api_models import ErrorPublic
from server.errors import ApiError
from server.fleet_state import FleetState
from server.paper_forecast import PaperForecast
from server.paper_tracker import PaperTracker

__all__ = ["PaperForecastPublic", "PaperPublic", "paper_router"]


class PaperForecastPublic(BaseModel):
    """When the printer runs out: ``eta_s`` from ``computed_at`` (null: not within two
    weeks), likely between ``eta_low_s`` and ``eta_high_s`` (null: beyond two weeks)."""

    computed_at: datetime
    runs_out_at: datetime | None
    eta_s: float | None
    eta_low_s: float | None
    eta_high_s: float | None
    remaining_pages: int
    pages_per_hour: float
    basis: str  # out | reserve (paper_low) | roll (since the refill)
    profile: str  # hour_of_day | flat
    history_h: float

    @classmethod
    def of(cls, f: PaperForecast) -> "PaperForecastPublic":
        """The forecast's fields by name (``runs_out_at`` is its property)."""
        return cls(**{name: getattr(f, name) for name in cls.model_fields})


class PaperPublic(BaseModel):
    terminal_id: str
    printer: str | None  # the printer tracked (a terminal's pages go to one printer)
    forecast: PaperForecastPublic | None


def paper_router(tracker: PaperTracker, fleet: FleetState) -> APIRouter:
    """The route above over ``tracker``; ``fleet`` says which terminals exist."""
    router = APIRouter(prefix="/api/v1/terminals", tags=["fleet"])

    @router.get(
        "/{terminal_id}/paper",
        response_model=PaperPublic,
        responses={404: {"model": ErrorPublic}},
        dependencies=[Depends(require(Role.VIEWER))],
        summary="The terminal's paper forecast: pages left, pages per hour, when it runs out",
    )
    def get_paper(terminal_id: Annotated[str, Path(max_length=64)]) -> PaperPublic:
        if fleet.get(terminal_id) is None:
            raise ApiError(404, "not_found", f"unknown terminal {terminal_id!r}")
        got = tracker.forecast(terminal_id)
        return PaperPublic(
            terminal_id=terminal_id,
            printer=tracker.printer(terminal_id),
            forecast=None if got is None else PaperForecastPublic.of(got),
        )

    return router
