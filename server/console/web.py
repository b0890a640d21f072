"""The operations console's routes: login, logout, the fleet, hall, terminal, problems and
audit pages, server-rendered from Jinja2 templates (``server/console/templates``). The
operator actions are ``server.console.action_routes``'s, the admin pages (tokens, users)
``server.console.admin_pages``'s, the service catalogue ``server.console.service_pages``'s,
the analytics ``server.console.analytics_pages``'s; ``install_console`` adds them.

Every route under ``/console`` except ``CONSOLE_OPEN_PATHS`` declares its role with
``console_role(Role.X)`` (a ``server.access_api.RoleDeclaration``, so the role-walk test
sees it), checked against the session's user: a page asked for without a usable session
redirects to the login page; a POST without one gets 401; a role that does not reach,
403; a POST whose form lacks the session's CSRF token, 403. A request counts as use of
its session (moving its idle end) unless it is a page's own automatic refresh
(``AUTO_REFRESH_QUERY``). Pages read the same read models as the API (``FleetState``,
the storage's history and events, the update timeline, the opening hours store, the
terminal registry, the audit log, the maintenance windows and acks). Handlers here
change nothing but sessions and the language. The other console modules take from here
what every page shares: the checked form and its fields (``_checked_form``,
``_form_text``, ``_form_role``, ``_form_time``), errors as pages (``_answers``,
``_offered``) and ``_render``.

State-changing calls are audited by ``server.access_api.AuditMiddleware`` like the API's
(actor ``user:<name>``; a login names its username as target). Passwords and session
secrets never reach a log line, an audit entry or a page.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar, get_args
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

import anyio
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CollectorRegistry, Counter

from protocol.messages import EventBody, PeripheralCondition, PeripheralKind, TerminalState
from protocol.taxonomy import Family
from protocol.update_status import UpdateState
from server.access import Principal, Role, allows
from server.access_api import RoleDeclaration, note_audit, note_principal
from server.access_store import AccessStore, AuditFilter
from server.analytics_report import AnalyticsSources
from server.audit import AuditEntry, AuditResult
from server.console.i18n import LANGUAGES, Catalog, choose_language, load_catalogs
from server.console.login_limit import LoginLimiter
from server.console.operator_view import operator_view
from server.console.service_offers import hall_offers
from server.console_auth import (
    SessionRecord,
    UserRecord,
    csrf_matches,
    hash_session_secret,
    new_session_secret,
    password_matches,
    session_problem,
    touch_due,
)
from server.console_store import ConsoleStore
from server.errors import ConsoleError, InvalidCursorError, StorageError
from server.fleet_state import FleetState
from server.fleet_views import (
    CONNECTIVITY,
    CONNECTIVITY_REASONS,
    REMOVED,
    HallSummary,
    TerminalFilter,
    TerminalView,
    Transition,
)
from server.health import Health
from server.identity_tables import RegistryStatus
from server.maintenance_service import MaintenanceActions
from server.opening_hours import Weekday, is_open
from server.opening_hours_store import HallHours
from server.records import EventRecord, UpdateRecord
from server.service_store import ServiceStore
from server.terminal_registry import RegisteredTerminal
from server.tokens import Tokens

if TYPE_CHECKING:  # matplotlib and WeasyPrint load only where a report is rendered
    from server.hall_report_service import HallReports

__all__ = [
    "AUTO_REFRESH_QUERY",
    "CONSOLE_OPEN_PATHS",
    "CONSOLE_PREFIX",
    "SESSION_COOKIE",
    "ConsoleRole",
    "ConsoleServices",
    "ConsoleUser",
    "console_role",
    "console_router",
    "install_console",
    "vocabulary",
]

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound=Exception)
_T = TypeVar("_T")
CONSOLE_PREFIX: Final = "/console"
SESSION_COOKIE: Final = "kf_session"
_LOGIN_COOKIE: Final = "kf_login"  # the login form's CSRF token (double submit)
_LANG_COOKIE: Final = "kf_lang"
CONSOLE_OPEN_PATHS: Final = frozenset({f"{CONSOLE_PREFIX}/login"})
"""Console paths that answer without a session: the login form and its POST."""
_REFRESH_KEY: Final = "refresh"
_REFRESH_AUTO: Final = "auto"
AUTO_REFRESH_QUERY: Final = f"{_REFRESH_KEY}={_REFRESH_AUTO}"
"""The query a page's own automatic refresh asks with (the rollout page's ``<meta
http-equiv="refresh">``): such a GET is served, but is passive: it does not count as use
of the session (``server.console_auth.touch_due``). Anyone may add it; it can only keep a
request from counting, never make one count. Every console route takes it (the session
check declares it, so ``server.query_guard`` lets it through)."""
_MAX_FORM_BYTES: Final = 16 * 1024
_TIMELINE_LIMIT: Final = 50
_AUDIT_PAGE: Final = 100
_LOGIN_RESULTS: Final = ("ok", "refused", "rate_limited", "csrf")


def vocabulary() -> tuple[str, ...]:
    """Every state, health, peripheral kind and condition a page may show: they are
    translated like the templates' text (``tests/unit/test_console_catalogs.py``)."""
    words: list[str] = [REMOVED, CONNECTIVITY, "transition", "event", "update"]
    words += CONNECTIVITY_REASONS
    words += (
        get_args(m.model_fields["type"].annotation)[0] for m in get_args(get_args(EventBody)[0])
    )
    words += (str(s.value) for s in UpdateState)
    words += (str(s.value) for s in RegistryStatus)
    for enum in (
        TerminalState, Health, Family, PeripheralKind, PeripheralCondition, Weekday, AuditResult,
        Role,
    ):  # fmt: skip
        words.extend(str(member.value) for member in enum)
    from server.console.rollout_pages import rollout_vocabulary  # it imports this module

    words.extend(rollout_vocabulary())
    return tuple(dict.fromkeys(words))


@dataclass(frozen=True, slots=True)
class ConsoleServices:
    """What the console reads from. Callables may do I/O (and raise StorageError)."""

    fleet: FleetState
    history: Callable[[str, int], list[Transition]]
    events: Callable[[str, int], list[EventRecord]]
    updates: Callable[[str, int], list[UpdateRecord]]
    hours: Callable[[str], HallHours | None]
    registered: Callable[[str], RegisteredTerminal | None] | None  # None: no registry
    audit_log: AccessStore
    store: ConsoleStore
    clock: Callable[[], datetime]  # aware UTC
    registry: CollectorRegistry
    session_idle: timedelta = timedelta(minutes=30)
    session_absolute: timedelta = timedelta(hours=12)
    login_rate_per_s: float = 0.1
    login_burst: int = 5
    cookie_secure: bool = True
    monotonic: Callable[[], float] | None = None  # the login budget's clock
    # the actions (server.console.action_routes, admin_pages); None: not on this server
    maintenance: MaintenanceActions | None = None
    decommission: Callable[[str, str], TerminalView | None] | None = None  # (id, actor)
    tokens: Tokens | None = None
    # the service catalogue (server.console.service_pages, the hall page's offers) and the
    # analytics (server.console.analytics_pages); None: not on this server
    catalogue: ServiceStore | None = None
    analytics: AnalyticsSources | None = None
    reports: "HallReports | None" = None  # the weekly hall report (report_pages)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """Who a console request acts as, with its session (for the CSRF token)."""

    principal: Principal
    user: UserRecord
    session: SessionRecord

    @property
    def can_act(self) -> bool:
        """Whether the page shows action buttons (operator and up)."""
        return allows(self.principal.role, Role.OPERATOR)

    @property
    def is_admin(self) -> bool:
        """Whether the page shows admin actions (decommission, tokens, users)."""
        return allows(self.principal.role, Role.ADMIN)


@dataclass(slots=True)
class _Console:
    services: ConsoleServices
    env: Environment
    catalogs: dict[str, Catalog]
    limiter: LoginLimiter
    logins: Counter


def _console(request: Request) -> _Console:
    console: _Console = request.app.state.kf_console
    return console


def _language(request: Request, user: UserRecord | None) -> str:
    return choose_language(
        None if user is None else user.language,
        request.cookies.get(_LANG_COOKIE),
        request.headers.get("accept-language"),
    )


class ConsoleRole(RoleDeclaration):
    """The dependency ``console_role(role)`` returns: the session's ``ConsoleUser``."""

    def __call__(
        self,
        request: Request,
        refresh: Annotated[str | None, Query(alias=_REFRESH_KEY, max_length=16)] = None,
    ) -> ConsoleUser:
        console = _console(request)
        services = console.services
        get = request.method in ("GET", "HEAD")
        secret = request.cookies.get(SESSION_COOKIE)
        found = None
        secret_hash = None
        if secret:
            secret_hash = hash_session_secret(secret)
            try:
                found = services.store.session(secret_hash)
            except StorageError as exc:
                log.warning("cannot check a console session: %s", exc)
                raise ConsoleError(503, "database_unavailable", "database unavailable") from None
        now = services.clock()
        session, user = found if found is not None else (None, None)
        problem = session_problem(
            session, user, now, idle=services.session_idle, absolute=services.session_absolute
        )
        if problem is not None or session is None or user is None or secret_hash is None:
            note_audit(request, reason=f"session {problem}")
            raise ConsoleError(401, "unauthenticated", f"session {problem}", login=get)
        if touch_due(session, now, passive=get and refresh == _REFRESH_AUTO):
            services.store.touch_session(secret_hash, now)
        principal = Principal(name=user.username, role=user.role, kind="user")
        note_principal(request, principal)
        if not allows(user.role, self.role):
            raise ConsoleError(403, "forbidden", f"this needs role {self.role}, not {user.role}")
        return ConsoleUser(principal=principal, user=user, session=session)


def console_role(role: Role) -> ConsoleRole:
    """The dependency of a console route that needs ``role``."""
    return ConsoleRole(role)


async def _form(request: Request) -> dict[str, str]:
    """The URL-encoded form of a POST (the first value of each field). Raises ConsoleError
    (413) for a body over 16 KiB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise ConsoleError(413, "too_large", "form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def _checked_form(request: Request, who: ConsoleUser) -> dict[str, str]:
    """The form of a POST by ``who``; raises ConsoleError(403) unless it carries the
    session's CSRF token."""
    form = await _form(request)
    if not csrf_matches(who.session.csrf_token, form.get("csrf_token")):
        note_audit(request, reason="csrf")
        raise ConsoleError(403, "csrf", "the form's CSRF token is missing or wrong")
    return form


def _form_text(
    form: Mapping[str, str], name: str, limit: int, *, required: bool = True
) -> str | None:
    """A form field's stripped text, at most ``limit`` characters; None for an empty one
    that is not ``required``. Raises ConsoleError(422)."""
    value = form.get(name, "").strip()
    if not value and not required:
        return None
    if not value or len(value) > limit:
        raise ConsoleError(422, "invalid_request", f"{name}: 1 to {limit} characters")
    return value


def _form_role(form: Mapping[str, str], error: str) -> Role:
    """The form's ``role`` field. Raises ConsoleError(422, ``error``) for one that is none."""
    try:
        return Role(form.get("role", ""))
    except ValueError:
        raise ConsoleError(422, error, "unknown role") from None


def _offered(part: _T | None, what: str) -> _T:
    """A part of ``ConsoleServices`` this server may lack. Raises ConsoleError(404) naming
    ``what`` when it has none."""
    if part is None:
        raise ConsoleError(404, "not_found", f"this server has no {what}")
    return part


@contextmanager
def _answers(refused: type[_E], page: Callable[[_E], ConsoleError]) -> Iterator[None]:
    """A service's ``refused`` errors as the error page ``page`` makes of each, and a
    StorageError as 503: what the console's pages and actions answer."""
    try:
        yield
    except refused as exc:
        raise page(exc) from None
    except StorageError as exc:
        raise _unavailable(exc) from None


def _render(
    request: Request,
    template: str,
    who: ConsoleUser | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    console = _console(request)
    language = _language(request, None if who is None else who.user)
    catalog = console.catalogs[language]
    html = console.env.get_template(template).render(
        _=catalog.gettext,
        gettext=catalog.gettext,
        ngettext=catalog.ngettext,
        language=language,
        languages=LANGUAGES,
        who=who,
        csrf_token=None if who is None else who.session.csrf_token,
        prefix=CONSOLE_PREFIX,
        path=request.url.path,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _set_cookie(response: Response, services: ConsoleServices, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=CONSOLE_PREFIX,
        secure=services.cookie_secure,
        httponly=True,
        samesite="strict",
    )


def _safe_next(target: str | None) -> str:
    """Where to go after login: a console path only (no open redirect)."""
    if target and target.startswith(CONSOLE_PREFIX) and "\\" not in target and "://" not in target:
        return target
    return CONSOLE_PREFIX


def _all_terminals(fleet: FleetState, flt: TerminalFilter) -> Iterator[TerminalView]:
    cursor = None
    while True:
        page = fleet.query(flt, limit=1000, cursor=cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@dataclass(frozen=True, slots=True)
class _Entry:
    """One line of a terminal's timeline: a transition, an event or an update state. The
    page translates ``what``, ``before``, ``after`` and ``reason`` (vocabulary words) and
    ``subject`` when ``subject_word``; ``subject`` otherwise and ``note`` show as they are."""

    at: datetime
    what: str  # "transition", "event", "update"
    subject: str  # connectivity or an event type (words), a peripheral name, a rollout id
    after: str | None = None  # the state reached
    before: str | None = None  # the state left; None: no arrow ("-": first sighting)
    note: str | None = None  # a fault code or an update's reason code
    reason: str | None = None  # why connectivity changed (``CONNECTIVITY_REASONS``)
    subject_word: bool = False


def _timeline(
    transitions: list[Transition], events: list[EventRecord], updates: list[UpdateRecord]
) -> list[_Entry]:
    entries = [
        _Entry(
            t.occurred_at,
            "transition",
            t.subject,
            after=t.to_state,
            before=t.from_state or "-",
            note=t.fault_code,
            reason=t.reason,
            subject_word=t.subject == CONNECTIVITY,
        )
        for t in transitions
    ]
    entries += [_event_entry(e) for e in events]
    entries += [
        _Entry(u.occurred_at, "update", u.rollout_id or "-", after=u.state, note=u.reason)
        for u in updates
    ]
    return sorted(entries, key=lambda e: e.at, reverse=True)


def _event_entry(event: EventRecord) -> _Entry:
    """An event: a peripheral change as ``name: previous -> condition (code)``."""
    body = event.body
    peripheral = body.get("peripheral")
    if isinstance(peripheral, dict):
        code = peripheral.get("fault_code")
        return _Entry(
            event.sent_at,
            "event",
            str(peripheral.get("name", "?")),
            after=str(peripheral.get("condition", "?")),
            before=str(body.get("previous") or "-"),
            note=str(code) if code else None,
        )
    return _Entry(event.sent_at, "event", event.type, subject_word=True)


def _by_region(halls: list[HallSummary]) -> list[tuple[str, list[HallSummary]]]:
    regions: dict[str, list[HallSummary]] = {}
    for summary in sorted(halls, key=lambda s: (s.region or "", s.hall or "")):
        regions.setdefault(summary.region or "-", []).append(summary)
    return list(regions.items())


def _unavailable(exc: StorageError) -> ConsoleError:
    log.warning("console page unavailable: %s", exc)
    return ConsoleError(503, "database_unavailable", "database unavailable")


def console_router() -> APIRouter:
    """The console's routes (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    viewer = Annotated[ConsoleUser, Depends(console_role(Role.VIEWER))]
    admin = Annotated[ConsoleUser, Depends(console_role(Role.ADMIN))]

    @router.get(f"{CONSOLE_PREFIX}/login", name="console.login_form")
    def login_form(request: Request, next: str | None = None) -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        response = _render(request, "login.html", None, login_token=token, next=_safe_next(next))
        _set_cookie(response, _console(request).services, _LOGIN_COOKIE, token)
        return response

    @router.post(f"{CONSOLE_PREFIX}/login", name="console.login")
    async def login(request: Request) -> Response:
        console = _console(request)
        services = console.services
        form = await _form(request)
        username = form.get("username", "").strip().lower()[:64]
        note_audit(request, target=username or None)
        expected = request.cookies.get(_LOGIN_COOKIE)
        if expected is None or not csrf_matches(expected, form.get("login_token")):
            note_audit(request, reason="csrf")
            console.logins.labels("csrf").inc()
            raise ConsoleError(403, "csrf", "the login form expired: load it again")
        source = request.client.host if request.client else None
        refusal = console.limiter.admit(username, source)
        if refusal is not None:
            console.logins.labels("rate_limited").inc()
            note_audit(request, reason=f"rate_limited_{refusal.value}")
            log.warning("console login refused: too many attempts (%s)", refusal.value)
            return _render(
                request, "login.html", None, 429, error="rate_limited", login_token=expected,
                next=_safe_next(form.get("next")),
            )  # fmt: skip
        try:
            user = await anyio.to_thread.run_sync(services.store.user, username)
        except StorageError as exc:
            raise _unavailable(exc) from None
        password = form.get("password", "")
        good = await anyio.to_thread.run_sync(
            password_matches, None if user is None else user.password_hash, password
        )
        if not good or user is None or user.disabled_at is not None:
            console.logins.labels("refused").inc()
            note_audit(request, reason="bad_credentials")
            log.info("console login refused for %r", username)
            return _render(
                request, "login.html", None, 401, error="bad_credentials", login_token=expected,
                next=_safe_next(form.get("next")),
            )  # fmt: skip
        now = services.clock()
        secret = new_session_secret()
        session = SessionRecord(
            secret_hash=hash_session_secret(secret),
            username=user.username,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            source=source,
        )
        try:
            await anyio.to_thread.run_sync(services.store.create_session, session)
        except StorageError as exc:
            raise _unavailable(exc) from None
        note_principal(request, Principal(name=user.username, role=user.role, kind="user"))
        console.logins.labels("ok").inc()
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        _set_cookie(response, services, SESSION_COOKIE, secret)
        response.delete_cookie(_LOGIN_COOKIE, path=CONSOLE_PREFIX)
        return response

    @router.post(f"{CONSOLE_PREFIX}/logout", name="console.logout")
    async def logout(request: Request, who: viewer) -> Response:
        await _checked_form(request, who)
        services = _console(request).services
        try:
            await anyio.to_thread.run_sync(services.store.delete_session, who.session.secret_hash)
        except StorageError as exc:
            raise _unavailable(exc) from None
        response = RedirectResponse(f"{CONSOLE_PREFIX}/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PREFIX)
        return response

    @router.post(f"{CONSOLE_PREFIX}/language", name="console.language")
    async def set_language(request: Request, who: viewer) -> Response:
        form = await _checked_form(request, who)
        language = form.get("language", "")
        if language not in LANGUAGES:
            raise ConsoleError(422, "invalid_request", f"unknown language {language!r}")
        services = _console(request).services
        note_audit(request, target=who.user.username, language=language)
        try:
            await anyio.to_thread.run_sync(
                lambda: services.store.update_user(who.user.username, language=language)
            )
        except StorageError as exc:
            raise _unavailable(exc) from None
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        _set_cookie(response, services, _LANG_COOKIE, language)
        return response

    @router.get(CONSOLE_PREFIX, name="console.fleet")
    def fleet_page(request: Request, who: viewer) -> HTMLResponse:
        fleet = _console(request).services.fleet
        halls = fleet.halls()
        total = sum(h.total for h in halls)
        online = sum(h.online for h in halls)
        return _render(
            request, "fleet.html", who, regions=_by_region(halls), total=total, online=online,
        )  # fmt: skip

    @router.get(f"{CONSOLE_PREFIX}/halls/{{hall}}", name="console.hall")
    def hall_page(
        request: Request, who: viewer, hall: Annotated[str, Path(max_length=64)]
    ) -> HTMLResponse:
        services = _console(request).services
        terminals = list(_all_terminals(services.fleet, TerminalFilter(hall=hall)))
        if not terminals:
            raise ConsoleError(404, "not_found", f"unknown hall {hall!r}")
        now = services.clock()
        try:
            hours = services.hours(hall)
            # "today" is the hall's day where its hours name a time zone, else the UTC day
            local = now if hours is None else now.astimezone(ZoneInfo(hours.hours.timezone))
            day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            history = sorted(
                (
                    t
                    for v in terminals
                    for t in services.history(v.id, _TIMELINE_LIMIT)
                    if t.occurred_at >= day_start
                ),
                key=lambda t: t.occurred_at,
                reverse=True,
            )
            ops = operator_view(services.maintenance, terminals, now)
        except StorageError as exc:
            raise _unavailable(exc) from None
        offers = None
        if services.catalogue is not None:
            offers = hall_offers(services.catalogue.current, terminals)
        return _render(
            request, "hall.html", who, hall=hall, terminals=terminals, hours=hours,
            open_now=None if hours is None else is_open(hours.hours, now), history=history,
            ops=ops, offers=offers,
        )  # fmt: skip

    @router.get(f"{CONSOLE_PREFIX}/terminals/{{terminal_id}}", name="console.terminal")
    def terminal_page(
        request: Request, who: viewer, terminal_id: Annotated[str, Path(max_length=64)]
    ) -> HTMLResponse:
        services = _console(request).services
        view = services.fleet.get(terminal_id)
        if view is None:
            return _gone(request, who, services, terminal_id)
        try:
            ops = operator_view(services.maintenance, [view], services.clock())
            timeline = _timeline(
                services.history(terminal_id, _TIMELINE_LIMIT),
                services.events(terminal_id, _TIMELINE_LIMIT),
                services.updates(terminal_id, _TIMELINE_LIMIT),
            )
            registered = None if services.registered is None else services.registered(terminal_id)
        except StorageError as exc:
            raise _unavailable(exc) from None
        return _render(
            request, "terminal.html", who, t=view, timeline=timeline, registered=registered,
            with_delivery=allows(who.principal.role, Role.OPERATOR),
            has_registry=services.registered is not None, ops=ops,
            can_decommission=services.decommission is not None,
        )  # fmt: skip

    @router.get(f"{CONSOLE_PREFIX}/problems", name="console.problems")
    def problems_page(request: Request, who: viewer) -> HTMLResponse:
        services = _console(request).services
        views = sorted(
            services.fleet.problem_terminals(),
            key=lambda v: (v.region or "", v.hall or "", v.id),
        )
        try:
            ops = operator_view(services.maintenance, views, services.clock())
        except StorageError as exc:
            raise _unavailable(exc) from None
        return _render(request, "problems.html", who, terminals=views, ops=ops)

    @router.get(f"{CONSOLE_PREFIX}/audit", name="console.audit")
    def audit_page(
        request: Request,
        who: admin,
        actor: Annotated[str | None, Query(max_length=128)] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(max_length=40)] = None,
        until: Annotated[str | None, Query(max_length=40)] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> HTMLResponse:
        services = _console(request).services
        flt = AuditFilter(
            actor=actor or None,
            action=action or None,
            since=_form_time(since),
            until=_form_time(until),
        )
        try:
            page = services.audit_log.audit(flt, limit=_AUDIT_PAGE, cursor=cursor or None)
        except InvalidCursorError:
            raise ConsoleError(422, "invalid_request", "cursor") from None
        except StorageError as exc:
            raise _unavailable(exc) from None
        query = {"actor": actor or "", "action": action or "", "since": since or "",
                 "until": until or ""}  # fmt: skip
        more = None
        if page.next_cursor is not None:
            more = "&".join(f"{k}={quote(v)}" for k, v in query.items())
            more += f"&cursor={quote(page.next_cursor)}"
        entries: tuple[AuditEntry, ...] = page.items
        return _render(request, "audit.html", who, entries=entries, query=query, more=more)

    return router


def _gone(
    request: Request, who: ConsoleUser, services: ConsoleServices, terminal_id: str
) -> HTMLResponse:
    """The page of a terminal the fleet does not know: decommissioned (the registry's
    tombstone says so), else ConsoleError(404)."""
    try:
        registered = None if services.registered is None else services.registered(terminal_id)
    except StorageError as exc:
        raise _unavailable(exc) from None
    if registered is None or registered.status is not RegistryStatus.DECOMMISSIONED:
        raise ConsoleError(404, "not_found", f"unknown terminal {terminal_id!r}")
    return _render(request, "decommission.html", who, t=None, terminal_id=terminal_id, done=True)


def _form_time(text: str | None) -> datetime | None:
    """A time from a filter form (``datetime-local``: no zone, taken as UTC). Raises
    ConsoleError(422) for text that is not a time."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConsoleError(422, "invalid_request", f"not a time: {text!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def install_console(app: FastAPI, services: ConsoleServices) -> None:
    """Give ``app`` the console: its state, its static files under ``/console/static``, the
    HTML error answers of ``ConsoleError``, and its routes."""
    env = Environment(
        loader=PackageLoader("server.console", "templates"),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    monotonic = services.monotonic
    if monotonic is None:
        import time

        monotonic = time.monotonic
    app.state.kf_console = _Console(
        services=services,
        env=env,
        catalogs=load_catalogs(),
        limiter=LoginLimiter(
            rate_per_s=services.login_rate_per_s, burst=services.login_burst, clock=monotonic
        ),
        logins=Counter(
            "kioskfleet_console_logins",
            "Console login attempts by result (ok, refused, rate_limited, csrf)",
            ["result"],
            registry=services.registry,
        ),
    )
    for result in _LOGIN_RESULTS:  # every series exists from the start (rate() needs a zero)
        app.state.kf_console.logins.labels(result)
    static = FsPath(__file__).parent / "static"
    app.mount(f"{CONSOLE_PREFIX}/static", StaticFiles(directory=static), name="console-static")

    async def _console_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ConsoleError):  # registered for ConsoleError only
            raise exc
        if exc.login:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            return RedirectResponse(f"{CONSOLE_PREFIX}/login?next={target}", status_code=303)
        response = _render(
            request, "error.html", None, exc.status, error=exc.error, message=exc.message
        )
        response.headers.update(exc.headers)
        return response

    app.add_exception_handler(ConsoleError, _console_error)
    from server.api import add_routes  # server.api imports nothing of the console
    from server.console.action_routes import action_router  # they import this module
    from server.console.admin_pages import admin_router
    from server.console.analytics_pages import analytics_router
    from server.console.report_pages import report_router
    from server.console.service_pages import service_router

    add_routes(app, console_router())
    add_routes(app, action_router())
    add_routes(app, admin_router())
    add_routes(app, service_router())
    add_routes(app, analytics_router())
    add_routes(app, report_router())
