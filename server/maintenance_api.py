"""Operator actions over the API: maintenance windows and acknowledging problems.

- ``PUT /api/v1/terminals/{id}/maintenance`` and ``PUT /api/v1/halls/{hall}/maintenance``
  (operator) start a window (body ``{"reason", "until"}``), replacing the target's window;
  ``DELETE`` on the same paths ends it early (404 ``no_maintenance`` if none is active);
- ``GET /api/v1/maintenance`` (viewer): the active windows;
- ``POST /api/v1/terminals/{id}/problems/{peripheral}/ack`` (operator): acknowledge the
  peripheral's current problem (body ``{"note", "assignee"?}``); 409 ``no_current_problem``
  when it has none (ok, unknown peripheral, terminal offline);
- ``GET /api/v1/problems`` (viewer): the current problems of online terminals with their
  ack (if it still applies) and whether they are in maintenance.

Every change is audited by the API's middleware under the route's name
(``terminal.maintenance.start`` ...), with its target and the reason/until or the
assignee as detail. Bounds (``server.maintenance.MaintenanceLimits``): text lengths (422),
``until`` within ``max_duration`` (422 ``until_too_far``), active windows (409
``too_many_windows``), acks per terminal (409 ``too_many_acks``). Decisions are
``server.maintenance``'s; rows are ``server.maintenance_store``'s.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from protocol.messages import PeripheralCondition
from protocol.topics import is_valid_terminal_id
from server.access import Principal, Role
from server.access_api import note_audit, require
from server.errors import ApiError, MaintenanceRefusedError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import TerminalView
from server.maintenance import (
    ActiveMaintenance,
    MaintenanceLimits,
    MaintenanceRefusal,
    Scope,
    ack_applies,
)
from server.maintenance_models import (
    MaintenanceListPublic,
    MaintenanceWindowPublic,
    OperatorStatePublic,
    ProblemAckPublic,
    ProblemPublic,
    ProblemsPublic,
    ack_public,
    window_public,
)
from server.maintenance_service import MaintenanceActions
from server.maintenance_store import MaintenanceStore

__all__ = ["maintenance_router", "operator_state"]

_ID = Annotated[str, Path(min_length=1, max_length=64)]
_LIMITS = MaintenanceLimits()  # the text bounds of the request bodies (the model's, fixed)
_STATUS: dict[str, tuple[int, str]] = {  # a refusal's code: the answer's status and error
    MaintenanceRefusal.UNTIL_PAST: (422, MaintenanceRefusal.UNTIL_PAST),
    MaintenanceRefusal.UNTIL_TOO_FAR: (422, MaintenanceRefusal.UNTIL_TOO_FAR),
    MaintenanceRefusal.NAIVE_TIME: (422, MaintenanceRefusal.NAIVE_TIME),
    "no_maintenance": (404, "no_maintenance"),
    "unknown_terminal": (404, "not_found"),
}


class MaintenanceStart(BaseModel):
    reason: str = Field(min_length=1, max_length=_LIMITS.max_reason)
    until: AwareDatetime = Field(description="when the window ends by itself (with an offset)")


class AckCreate(BaseModel):
    note: str = Field(min_length=1, max_length=_LIMITS.max_reason)
    assignee: str | None = Field(default=None, min_length=1, max_length=_LIMITS.max_assignee)


@contextmanager
def _answered() -> Iterator[None]:
    """The service's refusals and storage errors as API answers."""
    try:
        yield
    except MaintenanceRefusedError as exc:
        status, error = _STATUS.get(exc.code, (409, exc.code))
        raise ApiError(status, error, exc.message) from None
    except StorageError as exc:
        raise ApiError(503, "database_unavailable", str(exc)) from None


def operator_state(
    store: MaintenanceStore, view: TerminalView, now: datetime
) -> OperatorStatePublic:
    """What operators did about the terminal of ``view``: active windows covering it, acks
    of its current problems. Raises StorageError."""
    peripherals = {p.name: p for p in view.peripherals}
    acks = [
        ack_public(a)
        for a in store.acks(view.id)
        if ack_applies(a, peripherals.get(a.peripheral), view.online)
    ]
    windows = [window_public(w) for w in store.active_for(view.id, view.hall, now)]
    return OperatorStatePublic(maintenance=windows, acknowledged=acks)


def maintenance_router(
    actions: MaintenanceActions,
    fleet: FleetState,
    clock: Callable[[], datetime],
    *,
    active: Callable[[], ActiveMaintenance],
    problems_limit_max: int = 1000,
) -> APIRouter:
    """The routes above over ``actions``; ``active`` is what is in maintenance now (the
    metrics' book)."""
    router = APIRouter(prefix="/api/v1", tags=["operator actions"])
    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
    store = actions.store

    def start(
        request: Request, scope: Scope, target: str, body: MaintenanceStart, who: Principal
    ) -> MaintenanceWindowPublic:
        with _answered():
            window = actions.start(
                scope, target, reason=body.reason, until=body.until, actor=who.actor,
                note=partial(note_audit, request),
            )  # fmt: skip
        return window_public(window)

    def end(request: Request, scope: Scope, target: str) -> MaintenanceWindowPublic:
        with _answered():
            ended = actions.end(scope, target, note=partial(note_audit, request))
        return window_public(ended)

    def terminal_id_checked(terminal_id: str) -> str:
        if not is_valid_terminal_id(terminal_id):
            raise ApiError(422, "invalid_request", f"not a terminal id: {terminal_id!r}")
        return terminal_id

    @router.put(
        "/terminals/{terminal_id}/maintenance",
        response_model=MaintenanceWindowPublic,
        name="terminal.maintenance.start",
        summary="Put a terminal in maintenance until a time: its alerts stop at the source",
    )
    def start_terminal(
        request: Request, terminal_id: _ID, body: MaintenanceStart, who: operator
    ) -> MaintenanceWindowPublic:
        return start(request, Scope.TERMINAL, terminal_id_checked(terminal_id), body, who)

    @router.delete(
        "/terminals/{terminal_id}/maintenance",
        response_model=MaintenanceWindowPublic,
        name="terminal.maintenance.end",
        dependencies=[Depends(require(Role.OPERATOR))],
        summary="End a terminal's maintenance now (the window it had)",
    )
    def end_terminal(request: Request, terminal_id: _ID) -> MaintenanceWindowPublic:
        return end(request, Scope.TERMINAL, terminal_id)

    @router.put(
        "/halls/{hall}/maintenance",
        response_model=MaintenanceWindowPublic,
        name="hall.maintenance.start",
        summary="Put a whole hall in maintenance until a time: its alerts stop at the source",
    )
    def start_hall(
        request: Request, hall: _ID, body: MaintenanceStart, who: operator
    ) -> MaintenanceWindowPublic:
        return start(request, Scope.HALL, hall, body, who)

    @router.delete(
        "/halls/{hall}/maintenance",
        response_model=MaintenanceWindowPublic,
        name="hall.maintenance.end",
        dependencies=[Depends(require(Role.OPERATOR))],
        summary="End a hall's maintenance now (the window it had)",
    )
    def end_hall(request: Request, hall: _ID) -> MaintenanceWindowPublic:
        return end(request, Scope.HALL, hall)

    @router.get(
        "/maintenance",
        response_model=MaintenanceListPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="The active maintenance windows (expired ones have ended by themselves)",
    )
    def list_maintenance() -> MaintenanceListPublic:
        with _answered():
            windows = store.windows(active_at=clock())
        return MaintenanceListPublic(items=[window_public(w) for w in windows])

    @router.post(
        "/terminals/{terminal_id}/problems/{peripheral}/ack",
        response_model=ProblemAckPublic,
        name="problem.ack",
        summary="Acknowledge a peripheral's current problem (a note, an assignee); the ack"
        " ends with the problem. The problem's alert keeps firing",
    )
    def ack_problem(
        request: Request, terminal_id: _ID, peripheral: _ID, body: AckCreate, who: operator
    ) -> ProblemAckPublic:
        with _answered():
            ack = actions.ack(
                terminal_id, peripheral, note_text=body.note, assignee=body.assignee,
                actor=who.actor, note=partial(note_audit, request),
            )  # fmt: skip
        return ack_public(ack)

    @router.get(
        "/problems",
        response_model=ProblemsPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="Current peripheral problems of online terminals, with their ack and maintenance",
    )
    def list_problems(
        limit: Annotated[int, Query(ge=1, le=problems_limit_max)] = problems_limit_max,
    ) -> ProblemsPublic:
        in_maintenance = active()
        with _answered():
            acks = {(a.terminal_id, a.peripheral): a for a in store.acks()}
        items: list[ProblemPublic] = []
        total = 0
        for view in fleet.problem_terminals():  # cost follows problems, not the fleet
            if not view.online:
                continue  # its last conditions are not current
            for p in view.peripherals:
                if p.condition is PeripheralCondition.OK:
                    continue
                total += 1
                if len(items) >= limit:
                    continue
                ack = acks.get((view.id, p.name))
                items.append(
                    ProblemPublic(
                        terminal_id=view.id,
                        hall=view.hall,
                        region=view.region,
                        peripheral=p.name,
                        kind=p.kind,
                        condition=p.condition,
                        since=p.since,
                        fault_code=p.fault_code,
                        in_maintenance=in_maintenance.covers(view.id, view.hall),
                        ack=None
                        if ack is None or not ack_applies(ack, p, view.online)
                        else ack_public(ack),
                    )
                )
        items.sort(key=lambda i: (i.terminal_id, i.peripheral))
        return ProblemsPublic(items=items, total=total)

    return router
