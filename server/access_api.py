"""Who may call what: the role dependency every route declares, the token and audit routes,
and the audit middleware that records every state-changing call.

- ``require(Role.X)`` is the dependency a route declares (``dependencies=[...]`` or a
  ``Principal`` parameter). No, an unknown, an expired or a revoked bearer token: 401
  with ``WWW-Authenticate: Bearer``; a token whose role does not reach: 403.
  ``declared_role(route)`` reads it back, so a test can prove that every route outside
  ``OPEN_PATHS`` declares one.
- ``AuditMiddleware`` records one ``AuditEntry`` per call with a state-changing method
  (POST, PUT, PATCH, DELETE) that reached a route, denied ones included: actor (the
  token, else ``anonymous``), action (the route's ``name``, a dotted verb such as
  ``token.create``), target (what the handler names, else the path parameters), client
  address, result (2xx/3xx ok; 401/403 denied; else failed) and the status. A handler
  names its target and adds detail with ``note_audit(request, target=..., key=value)``.
- ``add_access_routes`` serves ``/api/v1/tokens`` and ``/api/v1/audit`` (admin only). No
  route edits or deletes an audit entry. A new token's answer, the only one with its
  secret, is a ``server.secret_answers.SecretJSONResponse`` (``Cache-Control: no-store``).

Secrets never reach a log line or an audit entry.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.access import Principal, Role, allows, parse_expiry
from server.access_models import (
    AuditPagePublic,
    TokenCreate,
    TokenCreatedPublic,
    TokenPublic,
    TokensPublic,
    audit_public,
    token_public,
)
from server.access_store import AccessStore, AuditFilter
from server.api_models import ErrorPublic
from server.audit import AuditEntry, AuditResult, AuditSink
from server.errors import AccessError, ApiError, InvalidCursorError, StorageError
from server.secret_answers import SecretJSONResponse
from server.tokens import Tokens

__all__ = [
    "OPEN_PATHS",
    "SELF_AUDITED",
    "AccessServices",
    "AuditMiddleware",
    "RoleDeclaration",
    "RoleRequirement",
    "add_access_routes",
    "declared_role",
    "install_access",
    "note_audit",
    "note_principal",
    "require",
]

log = logging.getLogger(__name__)

OPEN_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"}
    # TUF metadata and targets for terminals (server.update_api): signed, so open
    | {"/tuf/metadata/{filename}", "/tuf/targets/{vendor}/{filename}"}
)
"""Paths that answer without a token (probes, the API's own description, the signed TUF
repository). ``/metrics`` joins them only when ``metrics_require_token`` is off."""

_STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SELF_AUDITED: Final = {"x-kioskfleet-self-audited": True}
"""``openapi_extra=`` of a route that records its own, more precise audit entries (EST:
the registry knows the terminal, the outcome and the reason); the middleware skips it."""
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="kioskfleet"'}
_PRINCIPAL: Final = "kf_principal"  # request.state keys the middleware reads
_TARGET: Final = "kf_audit_target"
_DETAIL: Final = "kf_audit_detail"
_BEARER: Final = HTTPBearer(auto_error=False, description="kioskfleet API token (kf_...)")

_DENIED: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorPublic, "description": "no, unknown, expired or revoked token"},
    403: {"model": ErrorPublic, "description": "the token's role may not do this"},
}


@dataclass(frozen=True, slots=True)
class AccessServices:
    """What the access layer works with: tokens, the audit sink, the audit log's reader."""

    tokens: Tokens
    audit: AuditSink
    store: AccessStore


def _access(request: Request) -> AccessServices:
    access: AccessServices = request.app.state.kf_access
    return access


class RoleDeclaration:
    """What ``declared_role`` finds on a route: a dependency that stands for a required
    role. ``RoleRequirement`` (API tokens) and the console's session check are ones."""

    def __init__(self, role: Role) -> None:
        self.role = role


class RoleRequirement(RoleDeclaration):
    """The dependency ``require(role)`` returns: the caller's ``Principal``, or 401/403."""

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Principal:
        if credentials is None:
            raise ApiError(401, "unauthenticated", "a bearer token is required", _CHALLENGE)
        try:
            principal = _access(request).tokens.authenticate(credentials.credentials)
        except AccessError as exc:
            note_audit(request, reason=exc.code)
            raise ApiError(401, "unauthenticated", f"the token is {exc.code}", _CHALLENGE) from None
        except StorageError as exc:
            log.warning("cannot check a token: %s", exc)
            raise ApiError(503, "database_unavailable", "cannot check the token now") from None
        note_principal(request, principal)  # for the audit middleware
        if not allows(principal.role, self.role):
            raise ApiError(403, "forbidden", f"this needs role {self.role}, not {principal.role}")
        return principal


def note_principal(request: Request, principal: Principal) -> None:
    """Name who this call acts as in its audit entry (the role dependencies do it)."""
    setattr(request.state, _PRINCIPAL, principal)


def note_audit(request: Request, target: str | None = None, **detail: str) -> None:
    """What the audit entry of this call names as its ``target`` (instead of the path
    parameters) and adds to its ``detail``: short, non-secret strings only."""
    if target is not None:
        setattr(request.state, _TARGET, target)
    merged = dict(getattr(request.state, _DETAIL, {}))
    merged.update(detail)
    setattr(request.state, _DETAIL, merged)


def require(role: Role) -> RoleRequirement:
    """The dependency of a route that needs ``role`` (see ``server.access.allows``)."""
    return RoleRequirement(role)


def declared_role(route: BaseRoute) -> Role | None:
    """The role ``route`` requires, None if it declares none."""
    if not isinstance(route, APIRoute):
        return None
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, RoleDeclaration):
            return dependency.call.role
    return None


def role_dependencies(role: Role) -> list[DependsParam]:
    """``dependencies=`` for a route that needs ``role`` but not the ``Principal`` itself."""
    return [Depends(require(role))]


# --- audit middleware -----------------------------------------------------------------------


def _result(status: int | None) -> AuditResult:
    if status is not None and status < 400:
        return AuditResult.OK
    if status in (401, 403):
        return AuditResult.DENIED
    return AuditResult.FAILED


class AuditMiddleware:
    """Records every state-changing call that reached a route (see the module docstring).
    Recording never fails the call: the sink counts and logs its own failures."""

    def __init__(self, app: ASGIApp, sink: AuditSink, clock: Callable[[], datetime]) -> None:
        self.app = app
        self._sink = sink
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        status: int | None = None
        recorded = False

        async def record() -> None:
            nonlocal recorded
            recorded = True
            entry = self._entry(scope, status)
            if entry is not None:
                await anyio.to_thread.run_sync(self._sink.record, entry)

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Before the caller sees the answer: whoever reads the audit log after a
                # call finds that call in it.
                await record()
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not recorded:  # the route failed before it answered
                await record()

    def _entry(self, scope: Scope, status: int | None) -> AuditEntry | None:
        route = scope.get("route")
        if route is None:  # no route matched: not a call of the API
            return None
        if (getattr(route, "openapi_extra", None) or {}).get("x-kioskfleet-self-audited"):
            return None
        state: Mapping[str, Any] = scope.get("state", {})
        principal: Principal | None = state.get(_PRINCIPAL)
        path_params: Mapping[str, Any] = scope.get("path_params", {})
        target = state.get(_TARGET) or ",".join(str(v) for v in path_params.values()) or None
        detail = {"status": str(status) if status is not None else "none"}
        detail.update(state.get(_DETAIL, {}))
        client = scope.get("client")
        return AuditEntry(
            at=self._clock(),
            actor=principal.actor if principal is not None else "anonymous",
            action=getattr(route, "name", None) or f"{scope['method']} {scope['path']}",
            result=_result(status),
            target=target,
            source=client[0] if client else None,
            role=principal.role.value if principal is not None else None,
            detail=detail,
        )


# --- token and audit routes -----------------------------------------------------------------


def _access_error(exc: AccessError) -> ApiError:
    status = {"token_exists": 409, "no_such_token": 404}.get(exc.code, 422)
    return ApiError(status, "not_found" if status == 404 else exc.code, exc.message)


def _unavailable(what: str, exc: StorageError) -> ApiError:
    log.warning("%s unavailable: %s", what, exc)
    return ApiError(503, "database_unavailable", str(exc))


def _utc(value: datetime | None) -> datetime | None:
    """A query's time in UTC; one without a zone is taken as UTC."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def add_access_routes(app: FastAPI, *, page_limit_default: int, page_limit_max: int) -> None:
    """``/api/v1/tokens`` and ``/api/v1/audit`` on ``app``, all for role admin. Added to the
    app itself, not through ``include_router`` (which FastAPI now wraps, hiding the routes
    from ``app.routes`` and so from the test that checks every route's role)."""
    admin = Annotated[Principal, Depends(require(Role.ADMIN))]

    @app.post(
        tags=["access"],
        path="/api/v1/tokens",
        name="token.create",
        status_code=201,
        response_model=TokenCreatedPublic,
        response_class=SecretJSONResponse,
        responses={**_DENIED, 409: {"model": ErrorPublic}, 422: {"model": ErrorPublic}},
        summary="Create a token; its secret is in this answer only",
    )
    def create_token(request: Request, body: TokenCreate, who: admin) -> TokenPublic:
        access = _access(request)
        note_audit(request, target=body.name, role=body.role.value)
        if body.vendor:
            note_audit(request, vendor=body.vendor)
        try:
            expires = (
                None if body.expires is None else parse_expiry(body.expires, access.tokens.now())
            )
            record, secret = access.tokens.create(
                name=body.name,
                role=body.role,
                vendor=body.vendor,
                expires_at=expires,
                created_by=who.actor,
            )
        except AccessError as exc:
            raise _access_error(exc) from None
        except StorageError as exc:
            raise _unavailable("token store", exc) from None
        return token_public(record, secret)

    @app.get(
        tags=["access"],
        path="/api/v1/tokens",
        name="token.list",
        responses=_DENIED,
        response_model=TokensPublic,
        summary="Every token (without secrets), revoked ones too",
    )
    def list_tokens(request: Request, _who: admin) -> TokensPublic:
        try:
            records = _access(request).tokens.every()
        except StorageError as exc:
            raise _unavailable("token store", exc) from None
        return TokensPublic(items=[token_public(r) for r in records])

    @app.delete(
        tags=["access"],
        path="/api/v1/tokens/{name}",
        name="token.revoke",
        response_model=TokenPublic,
        responses={**_DENIED, 404: {"model": ErrorPublic}},
        summary="Revoke a token (it stays listed, marked revoked)",
    )
    def revoke_token(
        request: Request, name: Annotated[str, Path(max_length=64)], _who: admin
    ) -> TokenPublic:
        try:
            record = _access(request).tokens.revoke(name)
        except AccessError as exc:
            raise _access_error(exc) from None
        except StorageError as exc:
            raise _unavailable("token store", exc) from None
        return token_public(record)

    @app.get(
        tags=["access"],
        path="/api/v1/audit",
        name="audit.list",
        response_model=AuditPagePublic,
        responses={**_DENIED, 422: {"model": ErrorPublic}, 503: {"model": ErrorPublic}},
        summary="The audit log, newest first, filtered, cursor-paginated",
    )
    def list_audit(
        request: Request,
        _who: admin,
        actor: Annotated[str | None, Query(max_length=128)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        target: Annotated[str | None, Query(max_length=128)] = None,
        result: AuditResult | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=page_limit_max)] = page_limit_default,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> AuditPagePublic:
        flt = AuditFilter(
            actor=actor,
            action=action,
            target=target,
            result=result,
            since=_utc(since),
            until=_utc(until),
        )
        try:
            page = _access(request).store.audit(flt, limit=limit, cursor=cursor)
        except InvalidCursorError as exc:
            raise ApiError(422, "invalid_request", f"cursor: {exc}") from None
        except StorageError as exc:
            raise _unavailable("audit log", exc) from None
        return AuditPagePublic(
            items=[audit_public(e) for e in page.items], next_cursor=page.next_cursor
        )


def install_access(
    app: FastAPI,
    access: AccessServices,
    *,
    clock: Callable[[], datetime],
    page_limit_default: int,
    page_limit_max: int,
) -> None:
    """Give ``app`` the access layer: the services the role dependency reads, the audit
    middleware, the token and audit routes."""
    app.state.kf_access = access
    app.add_middleware(AuditMiddleware, sink=access.audit, clock=clock)
    add_access_routes(app, page_limit_default=page_limit_default, page_limit_max=page_limit_max)
