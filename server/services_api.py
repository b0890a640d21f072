"""The service catalogue over the API (issue 14).

- ``PUT /api/v1/services`` replaces the whole catalogue (operator or admin; audited by the
  API's middleware as ``service.catalogue.set``). The body is
  ``server.service_catalogue.Catalogue``; a bad one (unknown need, a code outside the
  pattern, a code twice, an unknown field) is refused with 422 and the reason.
- ``GET /api/v1/services`` reads it (viewer).

A terminal's ``services_available`` (``GET /api/v1/terminals/{id}``) and the gauge
``kioskfleet_hall_services_available`` follow a change at once (the store's in-memory copy).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from server.access import Principal, Role
from server.access_api import require
from server.errors import ApiError, StorageError
from server.service_catalogue import Catalogue
from server.service_store import ServiceStore

__all__ = ["services_router"]


def services_router(store: ServiceStore, clock: Callable[[], datetime]) -> APIRouter:
    """The routes above over ``store``; ``clock`` stamps a change (aware)."""
    router = APIRouter(prefix="/api/v1/services", tags=["services"])
    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

    @router.put(
        "",
        response_model=Catalogue,
        name="service.catalogue.set",
        summary="Replace the service catalogue: each service code and the peripherals it needs",
    )
    def set_catalogue(body: Catalogue, who: operator) -> Catalogue:
        try:
            return store.put(body, actor=who.actor, now=clock())
        except StorageError as exc:
            raise ApiError(503, "database_unavailable", str(exc)) from None

    @router.get(
        "",
        response_model=Catalogue,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="The service catalogue",
    )
    def get_catalogue() -> Catalogue:
        return store.current

    return router
