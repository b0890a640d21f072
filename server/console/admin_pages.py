"""The console's admin pages (role admin): API tokens (list, create with the secret shown
once, revoke) and console users (list, create with a role, disable, enable, set a new
password).

Tokens go through ``server.tokens.Tokens`` as the API's ``/api/v1/tokens`` routes do,
users through ``server.console_users.ConsoleUsers`` as ``kioskfleet user`` does; each
POST is CSRF-checked (``server.console.web``) and audited by the API's middleware under
the API's or the CLI's action name (``token.create``, ``token.revoke``, ``user.create``,
``user.disable``, ``user.enable``, ``user.passwd``), actor ``user:<name>``. A token's
secret is in the answer to its creation only (``Cache-Control: no-store``); a password
never reaches a page, a log line or an audit entry.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Final, TypeVar

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server.access import Role, parse_expiry
from server.access_api import note_audit
from server.console.web import (
    CONSOLE_PREFIX,
    ConsoleUser,
    _answers,
    _checked_form,
    _console,
    _form_role,
    _offered,
    _render,
    console_role,
)
from server.console_users import CONSOLE_ROLES, ConsoleUsers
from server.errors import AccessError, ConsoleError
from server.tokens import Tokens

__all__ = ["admin_router"]

_NAME = Annotated[str, Path(min_length=1, max_length=64)]
_ACCESS_STATUS: Final = {"token_exists": 409, "user_exists": 409, "no_such_token": 404,
                         "no_such_user": 404}  # fmt: skip
_T = TypeVar("_T")


def _refused(exc: AccessError) -> ConsoleError:
    return ConsoleError(_ACCESS_STATUS.get(exc.code, 422), exc.code, exc.message)


_answered = partial(_answers, AccessError, _refused)
"""Refusals and storage errors as console error pages (422 unless listed)."""


def _tokens(request: Request) -> Tokens:
    return _offered(_console(request).services.tokens, "token store")


def _users(request: Request) -> ConsoleUsers:
    services = _console(request).services
    return ConsoleUsers(services.store, services.clock)


async def _run(call: Callable[[], _T]) -> _T:
    with _answered():
        return await anyio.to_thread.run_sync(call)


def _tokens_page(request: Request, who: ConsoleUser, **context: Any) -> HTMLResponse:
    with _answered():
        records = _tokens(request).every()
    return _render(
        request, "tokens.html", who, tokens=records, roles=list(Role),
        now=_console(request).services.clock(), **context,
    )  # fmt: skip


def admin_router() -> APIRouter:
    """The admin pages' routes (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    admin = Annotated[ConsoleUser, Depends(console_role(Role.ADMIN))]

    @router.get(f"{CONSOLE_PREFIX}/tokens", name="console.tokens")
    def tokens_page(request: Request, who: admin) -> HTMLResponse:
        return _tokens_page(request, who)

    @router.post(f"{CONSOLE_PREFIX}/tokens", name="token.create")
    async def create_token(request: Request, who: admin) -> Response:
        form = await _checked_form(request, who)
        tokens = _tokens(request)
        name = form.get("name", "").strip()[:64]
        vendor = form.get("vendor", "").strip()[:64] or None
        expires = form.get("expires", "").strip()[:40] or None
        role = _form_role(form, "invalid_token")
        note_audit(request, target=name, role=role.value)
        if vendor:
            note_audit(request, vendor=vendor)

        def create() -> str:
            at = None if expires is None else parse_expiry(expires, tokens.now())
            _record, secret = tokens.create(
                name=name, role=role, vendor=vendor, expires_at=at, created_by=who.principal.actor
            )
            return secret

        secret = await _run(create)
        return _tokens_page(request, who, created=name, secret=secret)

    @router.post(f"{CONSOLE_PREFIX}/tokens/{{name}}/revoke", name="token.revoke")
    async def revoke_token(request: Request, who: admin, name: _NAME) -> Response:
        await _checked_form(request, who)
        tokens = _tokens(request)
        await _run(lambda: tokens.revoke(name))
        return RedirectResponse(f"{CONSOLE_PREFIX}/tokens", status_code=303)

    @router.get(f"{CONSOLE_PREFIX}/users", name="console.users")
    def users_page(request: Request, who: admin) -> HTMLResponse:
        with _answered():
            users = _console(request).services.store.users()
        return _render(request, "users.html", who, users=users, roles=CONSOLE_ROLES)

    @router.post(f"{CONSOLE_PREFIX}/users", name="user.create")
    async def create_user(request: Request, who: admin) -> Response:
        form = await _checked_form(request, who)
        username = form.get("username", "").strip().lower()[:64]
        role = _form_role(form, "invalid_user")
        note_audit(request, target=username, role=role.value)
        users = _users(request)
        password = form.get("password", "")
        await _run(lambda: users.create(username, role, password, actor=who.principal.actor))
        return RedirectResponse(f"{CONSOLE_PREFIX}/users", status_code=303)

    def user_change(verb: str, change: Callable[[ConsoleUsers, str, dict[str, str]], None]) -> None:
        @router.post(f"{CONSOLE_PREFIX}/users/{{username}}/{verb}", name=f"user.{verb}")
        async def changed(request: Request, who: admin, username: _NAME) -> Response:
            form = await _checked_form(request, who)
            note_audit(request, target=username)
            users = _users(request)
            await _run(lambda: change(users, username, form))
            return RedirectResponse(f"{CONSOLE_PREFIX}/users", status_code=303)

    user_change("disable", lambda users, name, _form: users.disable(name))
    user_change("enable", lambda users, name, _form: users.enable(name))
    user_change(
        "passwd", lambda users, name, form: users.set_password(name, form.get("password", ""))
    )
    return router
