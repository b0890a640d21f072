"""The console's service catalogue page: every service with the peripherals it needs
(viewer), and for operators and admins a form that replaces the catalogue whole.

The form is a text with one service a line, ``code: need, need`` (``catalogue_text`` and
``parse_catalogue_text``, its inverse); its POST is CSRF-checked (``server.console.web``),
validated as the API's body (``server.service_catalogue.Catalogue``) and stored by the
code the API's ``PUT /api/v1/services`` calls (``ServiceStore.put``), audited by the
API's middleware under the same action name (``service.catalogue.set``), actor
``user:<name>``. A catalogue that does not validate is shown again with the reason (422)
and changes nothing.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from protocol.taxonomy import Family, PeripheralKind
from server.access import Role
from server.access_api import note_audit
from server.console.web import (
    CONSOLE_PREFIX,
    ConsoleUser,
    _checked_form,
    _console,
    _render,
    _unavailable,
    console_role,
)
from server.errors import ConsoleError, StorageError
from server.service_catalogue import MAX_SERVICES, Catalogue
from server.service_store import ServiceStore

__all__ = ["catalogue_text", "parse_catalogue_text", "service_router"]

_MAX_LINES: Final = MAX_SERVICES + 100  # room for blank lines and comments


def catalogue_text(catalogue: Catalogue) -> str:
    """The form's text of ``catalogue``: ``code: need, need`` a line, in catalogue order."""
    lines = []
    for s in catalogue.services:
        needs = ", ".join(n.value for n in s.needs)
        lines.append(f"{s.code}: {needs}" if needs else s.code)
    return "\n".join(lines)


def parse_catalogue_text(text: str) -> Catalogue:
    """The catalogue the form's ``text`` says (blank lines and ``#`` comments skipped).
    Raises ValueError (too many lines) or pydantic's ValidationError, as the API's body."""
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        raise ValueError(f"at most {_MAX_LINES} lines")
    services: list[dict[str, Any]] = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        code, _, needs = line.partition(":")
        services.append(
            {"code": code.strip(), "needs": [n.strip() for n in needs.split(",") if n.strip()]}
        )
    return Catalogue.model_validate({"services": services})


def _store(request: Request) -> ServiceStore:
    store = _console(request).services.catalogue
    if store is None:
        raise ConsoleError(404, "not_found", "this server has no service catalogue")
    return store


def _page(
    request: Request, who: ConsoleUser, store: ServiceStore, status: int = 200, **context: Any
) -> HTMLResponse:
    catalogue = store.current
    context.setdefault("text", catalogue_text(catalogue))
    return _render(
        request, "services.html", who, status, catalogue=catalogue,
        needs=[*(f.value for f in Family), *(k.value for k in PeripheralKind)], **context,
    )  # fmt: skip


def service_router() -> APIRouter:
    """The service catalogue page's routes (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    viewer = Annotated[ConsoleUser, Depends(console_role(Role.VIEWER))]
    operator = Annotated[ConsoleUser, Depends(console_role(Role.OPERATOR))]

    @router.get(f"{CONSOLE_PREFIX}/services", name="console.services")
    def services_page(request: Request, who: viewer) -> HTMLResponse:
        return _page(request, who, _store(request))

    @router.post(f"{CONSOLE_PREFIX}/services", name="service.catalogue.set")
    async def set_catalogue(request: Request, who: operator) -> Response:
        form = await _checked_form(request, who)
        store = _store(request)
        text = form.get("catalogue", "")
        try:
            catalogue = parse_catalogue_text(text)
        except (ValueError, ValidationError) as exc:
            reasons = (
                [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]]
                if isinstance(exc, ValidationError)
                else [str(exc)]
            )
            note_audit(request, reason="invalid_catalogue")
            return _page(request, who, store, 422, text=text, reasons=reasons)
        note_audit(request, services=str(len(catalogue.services)))
        now = _console(request).services.clock()
        try:
            await anyio.to_thread.run_sync(
                lambda: store.put(catalogue, actor=who.principal.actor, now=now)
            )
        except StorageError as exc:
            raise _unavailable(exc) from None
        return RedirectResponse(f"{CONSOLE_PREFIX}/services", status_code=303)

    return router
