"""The console's operator actions: acknowledge a problem (with a note, an assignee), start
and end the maintenance of a terminal or a hall, decommission a terminal (admin, after a
confirmation page).

Each action is a CSRF-checked POST form (``server.console.web``) that calls the service
the API calls (``server.maintenance_service.MaintenanceActions``, the server's
decommission) and is audited by the API's middleware under the API route's action name
(``problem.ack``, ``terminal.maintenance.start`` ...) with the same target and detail,
actor ``user:<name>``. A done action redirects back to its page (303); a refusal answers
the error page with the service's code. Handlers never touch a table themselves. What
the pages show of the actions is ``server.console.operator_view``'s.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
from functools import partial
from typing import Annotated, Final

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from protocol.topics import is_valid_terminal_id
from server.access import Role
from server.access_api import note_audit
from server.console.web import (
    CONSOLE_PREFIX,
    ConsoleUser,
    _answers,
    _checked_form,
    _console,
    _form_text,
    _form_time,
    _offered,
    _render,
    _unavailable,
    console_role,
)
from server.errors import BrokerError, ConsoleError, MaintenanceRefusedError, StorageError
from server.maintenance import Scope
from server.maintenance_service import MaintenanceActions

__all__ = ["action_router"]

_ID = Annotated[str, Path(min_length=1, max_length=64)]
_REFUSAL_STATUS: Final = {"no_maintenance": 404, "unknown_terminal": 404}
_INVALID: Final = frozenset({"until_in_the_past", "until_too_far", "until_without_offset"})


def _refused(exc: MaintenanceRefusedError) -> ConsoleError:
    status = _REFUSAL_STATUS.get(exc.code, 422 if exc.code in _INVALID else 409)
    return ConsoleError(status, exc.code, exc.message)


_answered = partial(_answers, MaintenanceRefusedError, _refused)
"""The services' refusals and storage errors as console error pages."""


def _actions(request: Request) -> MaintenanceActions:
    return _offered(_console(request).services.maintenance, "maintenance actions")


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(CONSOLE_PREFIX + path, status_code=303)


def _terminal_id(terminal_id: str) -> str:
    if not is_valid_terminal_id(terminal_id):
        raise ConsoleError(422, "invalid_request", f"not a terminal id: {terminal_id!r}")
    return terminal_id


def action_router() -> APIRouter:
    """The action routes (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    operator = Annotated[ConsoleUser, Depends(console_role(Role.OPERATOR))]
    admin = Annotated[ConsoleUser, Depends(console_role(Role.ADMIN))]

    @router.post(
        f"{CONSOLE_PREFIX}/terminals/{{terminal_id}}/problems/{{peripheral}}/ack",
        name="problem.ack",
    )
    async def ack_problem(
        request: Request, who: operator, terminal_id: _ID, peripheral: _ID
    ) -> Response:
        form = await _checked_form(request, who)
        actions = _actions(request)
        note_text = _form_text(form, "note", actions.limits.max_reason)
        assignee = _form_text(form, "assignee", actions.limits.max_assignee, required=False)
        with _answered():
            await anyio.to_thread.run_sync(
                lambda: actions.ack(
                    terminal_id, peripheral, note_text=note_text or "", assignee=assignee,
                    actor=who.principal.actor, note=partial(note_audit, request),
                )
            )  # fmt: skip
        back = f"/terminals/{terminal_id}" if form.get("back") == "terminal" else "/problems"
        return _back(back)

    def maintenance_routes(scope: Scope, plural: str, page: str) -> None:
        @router.post(
            f"{CONSOLE_PREFIX}/{plural}/{{target}}/maintenance", name=f"{scope}.maintenance.start"
        )
        async def start(request: Request, who: operator, target: _ID) -> Response:
            form = await _checked_form(request, who)
            actions = _actions(request)
            if scope is Scope.TERMINAL:
                _terminal_id(target)
            reason = _form_text(form, "reason", actions.limits.max_reason) or ""
            until = _form_time(form.get("until", "").strip() or None)
            if until is None:
                raise ConsoleError(422, "invalid_request", "until: a time is needed")
            with _answered():
                await anyio.to_thread.run_sync(
                    lambda: actions.start(
                        scope, target, reason=reason, until=until, actor=who.principal.actor,
                        note=partial(note_audit, request),
                    )
                )  # fmt: skip
            return _back(f"/{page}/{target}")

        @router.post(
            f"{CONSOLE_PREFIX}/{plural}/{{target}}/maintenance/end",
            name=f"{scope}.maintenance.end",
        )
        async def end(request: Request, who: operator, target: _ID) -> Response:
            await _checked_form(request, who)
            actions = _actions(request)
            with _answered():
                await anyio.to_thread.run_sync(
                    lambda: actions.end(scope, target, note=partial(note_audit, request))
                )
            return _back(f"/{page}/{target}")

    maintenance_routes(Scope.TERMINAL, "terminals", "terminals")
    maintenance_routes(Scope.HALL, "halls", "halls")

    @router.get(
        f"{CONSOLE_PREFIX}/terminals/{{terminal_id}}/decommission",
        name="console.decommission_confirm",
    )
    def confirm_decommission(request: Request, who: admin, terminal_id: _ID) -> HTMLResponse:
        services = _console(request).services
        view = services.fleet.get(terminal_id)
        if view is None or services.decommission is None:
            raise ConsoleError(404, "not_found", f"unknown terminal {terminal_id!r}")
        return _render(request, "decommission.html", who, t=view, done=False)

    @router.post(
        f"{CONSOLE_PREFIX}/terminals/{{terminal_id}}/decommission", name="terminal.decommission"
    )
    async def decommission(request: Request, who: admin, terminal_id: _ID) -> Response:
        form = await _checked_form(request, who)
        services = _console(request).services
        if services.decommission is None:
            raise ConsoleError(404, "not_found", "this server cannot decommission")
        if form.get("confirm") != terminal_id:
            raise ConsoleError(422, "not_confirmed", "type the terminal's id to confirm")
        remove = services.decommission
        try:
            view = await anyio.to_thread.run_sync(
                lambda: remove(_terminal_id(terminal_id), who.principal.actor)
            )
        except BrokerError as exc:
            raise ConsoleError(503, "broker_unavailable", str(exc)) from None
        except StorageError as exc:
            raise _unavailable(exc) from None
        return _render(
            request, "decommission.html", who, t=view, terminal_id=terminal_id, done=True
        )

    return router
