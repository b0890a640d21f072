"""The HTTP API: fleet queries for operators, health/readiness probes, Prometheus metrics.

Every route declares the role it needs (``server.access_api.require``): fleet
reads need ``viewer``, a terminal's delivery counters (boot id, last seq: what
a forger would need) only show to ``operator`` and ``admin``, ``/metrics``
needs ``viewer`` unless ``metrics_require_token`` is off; ``/healthz`` and
``/readyz`` are open. Tokens and the audit log are ``server.access_api``'s
routes.

``create_app(services)`` builds a FastAPI app over the services it is handed
(fleet state, history reader, readiness check, metrics registry); nothing is
wired at import time. Reads come from the in-memory fleet state; only a
terminal's transition history (``/history``, ``/history.csv``, the detail's
newest transitions) and its stored events (``/events``) read the database, a
page at a time (``server.history_query``: ``since``/``until``, a cursor).
``/api/v1/terminals.csv`` is the filtered list as CSV (``server.csv_export``).
Handlers never change the fleet. An unknown query parameter is 422 on every
route (``server.query_guard``). OpenAPI at ``/openapi.json``, interactive docs
at ``/docs``.

Errors are JSON ``{"error", "message", "detail"?}``: 404 ``not_found``, 422
``invalid_request`` (with the validation errors), 503 ``database_unavailable``
or not ready.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations,
# which use limits from ``create_app``'s arguments.
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol.topics import is_valid_terminal_id
from protocol.version import __version__
from server.access import Principal, Role, allows
from server.access_api import AccessServices, install_access, require, role_dependencies
from server.api_docs import add_docs
from server.api_models import (
    DecommissionPublic,
    ErrorPublic,
    EventsPublic,
    HallsPublic,
    ReadinessPublic,
    TerminalDetailPublic,
    TerminalPagePublic,
    TerminalPublic,
    TransitionPublic,
    TransitionsPublic,
    events_public,
    hall_public,
    terminal_detail_public,
    terminal_public,
    transition_public,
    transitions_public,
)
from server.api_params import (
    CursorParam,
    TerminalFilterParams,
    TimeRangeParams,
    history_query,
)
from server.csv_export import CSV_MEDIA_TYPE, csv_lines
from server.errors import (
    ApiError,
    BrokerError,
    InvalidCursorError,
    StorageError,
)
from server.exposition import exposition
from server.fleet_state import FleetState
from server.fleet_views import TerminalFilter, TerminalView, Transition
from server.history_query import HistoryQuery, StoredPage
from server.maintenance_models import OperatorStatePublic
from server.query_guard import UnknownQueryGuard
from server.records import EventRecord

__all__ = ["ApiServices", "add_routes", "create_app"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ApiServices:
    """What the API reads from. ``history`` and ``readiness`` may do I/O."""

    fleet: FleetState
    # one page of a terminal's transitions / stored events; raise StorageError, InvalidCursorError
    history: Callable[[str, HistoryQuery], StoredPage[Transition]]
    events: Callable[[str, HistoryQuery], StoredPage[EventRecord]]
    readiness: Callable[[], list[str]]  # reasons the server is not ready; empty when ready
    registry: CollectorRegistry
    access: AccessServices
    clock: Callable[[], datetime]  # aware UTC: audit entry times
    # removes a terminal (Server.decommission(id, actor)); raises BrokerError when it cannot
    # be done now
    decommission: Callable[[str, str], TerminalView | None] | None = None
    page_limit_default: int = 100
    page_limit_max: int = 1000
    history_limit: int = 50
    # the catalogued services a terminal can offer now (server.service_catalogue)
    services_available: Callable[[TerminalView], list[str]] = lambda _view: []
    history_limit_max: int = 1000
    metrics_require_token: bool = True
    # is the hall open by its opening hours now (server.hall_openings; True: no hours)
    hall_open: Callable[[str | None], bool] = lambda hall: True
    # what operators did about a terminal (server.maintenance_api.operator_state); reads the
    # database (raises StorageError); None: the detail has no ``operator`` part
    operator_state: Callable[[TerminalView], OperatorStatePublic] | None = None


def _error(status: int, error: str, message: str, detail: Any = None) -> JSONResponse:
    body = ErrorPublic(error=error, message=message, detail=detail)
    return JSONResponse(status_code=status, content=body.model_dump(exclude_none=True))


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorPublic, "description": "invalid query or path"}
}


def _stored(what: str, terminal_id: str, read: Callable[[], _T]) -> _T:
    """``read()``; a StorageError becomes 503 ``database_unavailable``."""
    try:
        return read()
    except StorageError as exc:
        log.warning("%s of %s unavailable: %s", what, terminal_id, exc)
        raise ApiError(503, "database_unavailable", str(exc)) from None


def _csv_response(lines: Iterator[str], filename: str) -> StreamingResponse:
    return StreamingResponse(
        lines,
        media_type=CSV_MEDIA_TYPE,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put ``router``'s routes on ``app`` itself. Not ``include_router``: FastAPI 0.165 keeps
    included routes behind a private wrapper, out of ``app.routes``, where the test that
    checks every route's role (``test_api_access.py``) could not see them."""
    app.router.routes.extend(router.routes)


def create_app(services: ApiServices) -> FastAPI:
    """The API over ``services``."""
    app = FastAPI(
        title="kioskfleet server",
        version=__version__,
        description="Fleet state of self-service terminals: health, peripherals, history.",
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)  # /docs and /redoc with local assets (offline-first)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        response = _error(exc.status, exc.error, exc.message)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        return _error(422, "invalid_request", _validation_message(errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        return _error(exc.status_code, code, str(exc.detail))

    fleet = services.fleet
    viewer = role_dependencies(Role.VIEWER)
    # Inside the audit middleware (added after it). A call it refuses never reaches a route,
    # so, like a 404, it is not audited (the audit records calls that reached a route).
    app.add_middleware(UnknownQueryGuard, routes=lambda: app.router.routes)
    install_access(
        app,
        services.access,
        clock=services.clock,
        page_limit_default=services.page_limit_default,
        page_limit_max=services.page_limit_max,
    )

    def with_hours(flt: TerminalFilter) -> TerminalFilter:
        """``flt`` knowing which halls are closed now, so that ``?health=closed`` (and
        ``offline``) select what the list shows; only when a health filter is given."""
        if flt.health is None:
            return flt
        halls = {h.hall for h in fleet.halls()}
        return replace(flt, closed_halls=frozenset(h for h in halls if not services.hall_open(h)))

    @app.get(
        "/api/v1/terminals",
        response_model=TerminalPagePublic,
        responses=_ERROR_RESPONSES,
        dependencies=viewer,
        tags=["fleet"],
        summary="List terminals (filtered, ordered by id, cursor-paginated)",
    )
    def list_terminals(
        flt: TerminalFilterParams,
        limit: Annotated[
            int, Query(ge=1, le=services.page_limit_max)
        ] = services.page_limit_default,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> TerminalPagePublic:
        try:
            page = fleet.query(with_hours(flt), limit=limit, cursor=cursor)
        except InvalidCursorError as exc:
            raise ApiError(422, "invalid_request", f"cursor: {exc}") from None
        return TerminalPagePublic(
            items=[terminal_public(v, hall_open=services.hall_open(v.hall)) for v in page.items],
            next_cursor=page.next_cursor,
            total=page.total,
        )

    def matching_terminals(flt: TerminalFilter) -> Iterator[TerminalPublic]:
        flt = with_hours(flt)
        cursor: str | None = None
        while True:
            page = fleet.query(flt, limit=services.page_limit_max, cursor=cursor)
            yield from (
                terminal_public(v, hall_open=services.hall_open(v.hall)) for v in page.items
            )
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @app.get(
        "/api/v1/terminals.csv",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}, **_ERROR_RESPONSES},
        dependencies=viewer,
        tags=["fleet"],
        summary="The filtered terminal list as CSV (same filters and fields as the JSON list;"
        " nested peripherals and software as JSON cells), streamed",
    )
    def terminals_csv(flt: TerminalFilterParams) -> StreamingResponse:
        return _csv_response(csv_lines(TerminalPublic, matching_terminals(flt)), "terminals.csv")

    def known(terminal_id: str) -> None:
        if fleet.get(terminal_id) is None:
            raise ApiError(404, "not_found", f"unknown terminal {terminal_id!r}")

    def read_history(terminal_id: str, query: HistoryQuery) -> StoredPage[Transition]:
        return _stored("history", terminal_id, lambda: services.history(terminal_id, query))

    @app.get(
        "/api/v1/terminals/{terminal_id}",
        response_model=TerminalDetailPublic,
        responses={404: {"model": ErrorPublic}, 503: {"model": ErrorPublic}, **_ERROR_RESPONSES},
        tags=["fleet"],
        summary="One terminal's latest state and its transitions, newest first"
        " (its delivery counters for operator and admin)",
    )
    def get_terminal(
        terminal_id: Annotated[str, Path(max_length=64)],
        who: Annotated[Principal, Depends(require(Role.VIEWER))],
        history_limit: Annotated[
            int, Query(ge=1, le=services.history_limit_max)
        ] = services.history_limit,
    ) -> TerminalDetailPublic:
        view = fleet.get(terminal_id)
        if view is None:
            raise ApiError(404, "not_found", f"unknown terminal {terminal_id!r}")
        history = read_history(terminal_id, HistoryQuery(limit=history_limit)).items
        detail = terminal_detail_public(
            view,
            list(history),
            with_delivery=allows(who.role, Role.OPERATOR),
            hall_open=services.hall_open(view.hall),
            services_available=services.services_available(view),
        )
        state = services.operator_state
        if state is not None:
            detail.operator = _stored("operator state", terminal_id, lambda: state(view))
        return detail

    @app.get(
        "/api/v1/terminals/{terminal_id}/history",
        response_model=TransitionsPublic,
        responses={404: {"model": ErrorPublic}, 503: {"model": ErrorPublic}, **_ERROR_RESPONSES},
        dependencies=viewer,
        tags=["fleet"],
        summary="One terminal's transitions in a time range, newest first, cursor-paginated",
    )
    def get_history(
        terminal_id: Annotated[str, Path(max_length=64)],
        window: TimeRangeParams,
        cursor: CursorParam = None,
        limit: Annotated[int, Query(ge=1, le=services.history_limit_max)] = services.history_limit,
    ) -> TransitionsPublic:
        known(terminal_id)
        page = read_history(terminal_id, history_query(limit, window, cursor))
        return transitions_public(page.items, page.next_cursor)

    @app.get(
        "/api/v1/terminals/{terminal_id}/history.csv",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/csv": {}}},
            404: {"model": ErrorPublic},
            503: {"model": ErrorPublic},
            **_ERROR_RESPONSES,
        },
        dependencies=viewer,
        tags=["fleet"],
        summary="One terminal's transitions in a time range as CSV, newest first, streamed",
    )
    def history_csv(
        terminal_id: Annotated[str, Path(max_length=64)], window: TimeRangeParams
    ) -> StreamingResponse:
        known(terminal_id)
        query = HistoryQuery(limit=services.history_limit_max, window=window)
        first = read_history(terminal_id, query)  # a database that is away answers 503

        def transitions() -> Iterator[TransitionPublic]:
            page = first
            while True:
                yield from (transition_public(t) for t in page.items)
                if page.next_cursor is None:
                    return
                # Past the first page the status is sent: a failure here aborts the body.
                page = services.history(terminal_id, replace(query, cursor=page.next_cursor))

        return _csv_response(
            csv_lines(TransitionPublic, transitions()), f"{terminal_id}-history.csv"
        )

    @app.get(
        "/api/v1/terminals/{terminal_id}/events",
        response_model=EventsPublic,
        responses={404: {"model": ErrorPublic}, 503: {"model": ErrorPublic}, **_ERROR_RESPONSES},
        tags=["fleet"],
        summary="One terminal's stored events in a time range, newest first, cursor-paginated"
        " (boot id and seq for operator and admin)",
    )
    def get_events(
        terminal_id: Annotated[str, Path(max_length=64)],
        who: Annotated[Principal, Depends(require(Role.VIEWER))],
        window: TimeRangeParams,
        cursor: CursorParam = None,
        limit: Annotated[int, Query(ge=1, le=services.history_limit_max)] = services.history_limit,
    ) -> EventsPublic:
        known(terminal_id)
        query = history_query(limit, window, cursor)
        page = _stored("events", terminal_id, lambda: services.events(terminal_id, query))
        return events_public(
            page.items, page.next_cursor, with_delivery=allows(who.role, Role.OPERATOR)
        )

    decommission = services.decommission
    if decommission is not None:

        @app.post(
            "/api/v1/terminals/{terminal_id}/decommission",
            response_model=DecommissionPublic,
            responses={503: {"model": ErrorPublic}, **_ERROR_RESPONSES},
            name="terminal.decommission",
            tags=["fleet"],
            summary="Remove a terminal: revoked, its retained state cleared, out of the fleet "
            "state and gauges; its history kept",
        )
        def decommission_terminal(
            terminal_id: Annotated[str, Path(max_length=64)],
            who: Annotated[Principal, Depends(require(Role.OPERATOR))],
        ) -> DecommissionPublic:
            if not is_valid_terminal_id(terminal_id):
                raise ApiError(422, "invalid_request", f"not a terminal id: {terminal_id!r}")
            try:
                view = decommission(terminal_id, who.actor)
            except BrokerError as exc:
                log.warning("decommission of %s not done: %s", terminal_id, exc)
                raise ApiError(503, "broker_unavailable", str(exc)) from None
            return DecommissionPublic(
                terminal_id=terminal_id,
                known=view is not None,
                last_state=None
                if view is None
                else terminal_public(view, hall_open=services.hall_open(view.hall)),
            )

    @app.get(
        "/api/v1/halls",
        response_model=HallsPublic,
        dependencies=viewer,
        tags=["fleet"],
        summary="Per hall: terminals by state and peripheral problems by kind and condition",
    )
    def list_halls() -> HallsPublic:
        return HallsPublic(items=[hall_public(s) for s in fleet.halls()])

    @app.get("/healthz", tags=["probes"], summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/readyz",
        response_model=ReadinessPublic,
        responses={503: {"model": ReadinessPublic}},
        tags=["probes"],
        summary="Broker connected, database reachable, no pending flush failure",
    )
    def readyz() -> JSONResponse:
        reasons = services.readiness()
        body = ReadinessPublic(ready=not reasons, reasons=reasons)
        return JSONResponse(status_code=503 if reasons else 200, content=body.model_dump())

    @app.get(
        "/metrics",
        dependencies=viewer if services.metrics_require_token else [],
        tags=["probes"],
        summary="Prometheus exposition (role viewer unless metrics_require_token is off)",
    )
    def metrics() -> Response:
        return Response(exposition(services.registry), media_type=CONTENT_TYPE_LATEST)

    return app
