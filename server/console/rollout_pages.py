"""The console's releases and rollouts pages: the signed releases with their verification
status and signing keys; the rollouts, one rollout's phases and per-terminal progress;
creating a rollout (with a preview of how many terminals its selector matches now) and
its operator events (approve, pause, resume, cancel, open the gate).

Every page reads what the API reads (``TufRepository.releases`` / ``vendors``, the
``RolloutService``); every action goes through the API's own code path
(``server.rollout_api.create_rollout`` and ``ROLLOUT_EVENTS``), so the planner decides
exactly as for an API call, the creator cannot approve their own rollout, and the audit
log records the same actions (``rollout.create``, ``rollout.approve``, ...) with the
console user as actor. The preview counts with ``RolloutService.matching``, the code the
rollout tick selects with. Viewers read; operator and up act (``console_role``); every
POST carries the session's CSRF token. A rollout page that is still moving refreshes
itself (a plain ``<meta http-equiv="refresh">``: no script) with ``AUTO_REFRESH_QUERY``,
so that a forgotten tab does not keep its session from ending when idle.

Never decides anything about a rollout itself and never changes one without the service.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Final

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from server.access import Role
from server.access_api import note_audit
from server.console.web import (
    AUTO_REFRESH_QUERY,
    CONSOLE_PREFIX,
    ConsoleUser,
    _answers,
    _checked_form,
    _render,
    _unavailable,
    console_role,
)
from server.errors import ConsoleError, ServerError, StorageError
from server.rollout_api import (
    ROLLOUT_EVENTS,
    ROLLOUT_ID_PATTERN,
    PhaseIn,
    RolloutCreate,
    SelectorIn,
    create_rollout,
)
from server.rollout_planner import (
    MANUAL,
    PauseReason,
    Rollout,
    RolloutStatus,
    TerminalProgress,
    TerminalState,
    phase_quota,
)
from server.rollout_service import (
    SELECTOR_KEYS,
    RolloutConflictError,
    RolloutNotFoundError,
    RolloutService,
)
from server.rollout_store import StoredRollout
from server.tuf_repository import ReleaseView

__all__ = [
    "REFUSAL_TEXTS",
    "RELEASE_STATUSES",
    "Refusal",
    "RolloutFormError",
    "RolloutPages",
    "parse_phases",
    "refusal_sentence",
    "rollout_form",
    "rollout_pages_router",
    "rollout_vocabulary",
    "selector_form",
]

log = logging.getLogger(__name__)

RELEASE_STATUSES: Final = ("verified", "expired", "revoked", "invalid")
"""``ReleaseView.status`` values (``server.tuf_repository``)."""
_SETTLED: Final = frozenset(
    {RolloutStatus.ABORTED, RolloutStatus.CANCELED, RolloutStatus.COMPLETED}
)
_REFRESH_S: Final = 3
_STATUS_WORDS: Final = frozenset(str(s.value) for s in RolloutStatus)
_PHASE = re.compile(r"^(\d{1,7})(%?)(?:@(manual|\d{1,7}(?:\.\d+)?s))?$")
_DEFAULTS: Final[Mapping[str, str]] = {
    "phases": "5, 100%",
    "success_threshold": "0.9",
    "abort_failure_ratio": "0.5",
    "abort_min_decided": "10",
    "terminal_timeout_s": "3600",
    "max_attempts": "3",
}
_ROLLOUT_ID = Annotated[str, Path(pattern=ROLLOUT_ID_PATTERN)]

REFUSAL_TEXTS: Final[Mapping[str, str]] = {
    "already_approved": "The rollout is already approved.",
    "approver_role_not_allowed": "Your role may not approve rollouts.",
    "approver_is_creator": "A rollout's creator cannot approve it: another operator must.",
    "no_gate_waiting": "No manual gate is waiting to be opened.",
    "gate_is_a_delay": "This phase's gate is a delay: it opens by itself.",
    "rollout_": "The rollout is %(status)s: it takes no more events.",
    "not_running_": "Only a running rollout can be paused; this one is %(status)s.",
    "not_paused_": "Only a paused rollout can be resumed; this one is %(status)s.",
}
"""The console's sentence for each reason the planner refuses an operator event with
(``server.rollout_planner``); a key ending in ``_`` is a prefix followed by the rollout's
status (``%(status)s``, translated too). A reason not listed is shown as it is."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused event as the page shows it: ``text`` (a catalogue message) and the status
    word it names ("" when none)."""

    text: str
    status: str = ""


def refusal_sentence(reason: str) -> Refusal:
    """The page's sentence for the planner's refusal ``reason`` (``REFUSAL_TEXTS``)."""
    if reason in REFUSAL_TEXTS:
        return Refusal(REFUSAL_TEXTS[reason])
    for prefix, text in REFUSAL_TEXTS.items():
        status = reason.removeprefix(prefix)
        if prefix.endswith("_") and status in _STATUS_WORDS:
            return Refusal(text, status)
    return Refusal(reason.replace("%", "%%"))


def rollout_vocabulary() -> tuple[str, ...]:
    """The rollout, terminal update, pause reason and release status words, the selector
    keys and the refusal sentences the pages show (translated like the templates' text)."""
    words = [str(m.value) for e in (RolloutStatus, TerminalState, PauseReason) for m in e]
    return (*words, *RELEASE_STATUSES, MANUAL, *SELECTOR_KEYS, *REFUSAL_TEXTS.values())


@dataclass(frozen=True, slots=True)
class RolloutPages:
    """What the pages read: the rollout service, the releases and the delegated vendors
    (empty when signed releases are off). Callables may raise StorageError."""

    rollouts: Callable[[], RolloutService]
    releases: Callable[[], list[ReleaseView]]
    vendors: Callable[[], list[dict[str, Any]]]


class RolloutFormError(ServerError, ValueError):
    """A field of the console's create form that cannot be read (``field``, ``message``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_phases(text: str) -> list[PhaseIn]:
    """Phases written as ``5, 25%@manual, 100%@600s``: a count or a percentage of the
    selected terminals, each optionally gated (``@manual``: an operator opens it;
    ``@<seconds>s``: that long after the previous phase passed). Raises RolloutFormError."""
    phases: list[PhaseIn] = []
    for part in (p.strip() for p in text.split(",")):
        match = _PHASE.match(part.replace(" ", ""))
        if match is None:
            raise RolloutFormError("phases", f"not a phase: {part!r}")
        size, percent, gate = match.groups()
        try:
            phases.append(
                PhaseIn(
                    size=int(size),
                    unit="percent" if percent else "count",
                    gate=0.0 if gate is None else (MANUAL if gate == MANUAL else float(gate[:-1])),
                )
            )
        except ValidationError as exc:
            raise RolloutFormError("phases", f"{part!r}: {exc.errors()[0]['msg']}") from None
    return phases


def selector_form(form: Mapping[str, str]) -> dict[str, str | list[str]]:
    """The selector keys the create form fills: each field's text, ``tags`` split at commas
    and spaces; empty fields left out."""
    selector: dict[str, str | list[str]] = {}
    for key in SELECTOR_KEYS:
        text = form.get(key, "").strip()
        if key == "tags":
            tags = [t for t in re.split(r"[,\s]+", text) if t]
            if tags:
                selector[key] = tags
        elif text:
            selector[key] = text
    return selector


def rollout_form(form: Mapping[str, str]) -> RolloutCreate:
    """The rollout the create form describes (the API's body model). Raises RolloutFormError
    naming the first field that is wrong."""
    selector = selector_form(form)
    try:
        return RolloutCreate(
            rollout_id=form.get("rollout_id", "").strip(),
            target=form.get("target", ""),
            selector=SelectorIn.model_validate(selector),
            phases=parse_phases(form.get("phases", "")),
            success_threshold=form.get("success_threshold", ""),
            abort_failure_ratio=form.get("abort_failure_ratio", ""),
            abort_min_decided=form.get("abort_min_decided", ""),
            terminal_timeout_s=form.get("terminal_timeout_s", ""),
            max_attempts=form.get("max_attempts", ""),
            install_while_open=form.get("install_while_open") == "on",
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "form"
        raise RolloutFormError(field, str(first["msg"])) from None


def _counts(terminals: Iterable[TerminalProgress]) -> dict[str, int]:
    """Terminals per state, by state name."""
    return dict(sorted(Counter(t.state.value for t in terminals).items()))


@dataclass(frozen=True, slots=True)
class _PhaseRow:
    number: int  # 1-based, as shown
    spec: PhaseIn
    quota: int  # terminals phases 1..number may have admitted
    counts: dict[str, int]
    current: bool


def _phase_rows(rollout: Rollout) -> list[_PhaseRow]:
    d = rollout.definition
    selected = len(rollout.terminals)
    per_phase: dict[int | None, list[TerminalProgress]] = {}
    for t in rollout.terminals:
        per_phase.setdefault(t.phase, []).append(t)
    rows = []
    for i, p in enumerate(d.phases):
        gate: Any = MANUAL if p.gate == MANUAL else p.gate.seconds
        rows.append(
            _PhaseRow(
                number=i + 1,
                spec=PhaseIn(size=p.size, unit=p.unit, gate=gate),
                quota=phase_quota(d, i, selected),
                counts=_counts(per_phase.get(i, [])),
                current=i == rollout.phase and rollout.status not in _SETTLED,
            )
        )
    return rows


def _answered() -> AbstractContextManager[None]:
    """An unknown rollout as 404, storage errors as 503."""
    return _answers(
        RolloutNotFoundError, lambda exc: ConsoleError(404, "not_found", f"no rollout {exc}")
    )


def rollout_pages_router(pages: RolloutPages) -> APIRouter:
    """The releases and rollouts pages over ``pages`` (added with ``server.api.add_routes``)."""
    router = APIRouter(include_in_schema=False)
    viewer = Annotated[ConsoleUser, Depends(console_role(Role.VIEWER))]
    operator = Annotated[ConsoleUser, Depends(console_role(Role.OPERATOR))]

    def verified() -> list[ReleaseView]:
        return [r for r in pages.releases() if r.status == "verified"]

    @router.get(f"{CONSOLE_PREFIX}/releases", name="console.releases")
    def releases_page(request: Request, who: viewer) -> HTMLResponse:
        with _answered():
            releases, vendors = pages.releases(), pages.vendors()
        keys = {v["vendor"]: v for v in vendors}
        return _render(request, "releases.html", who, releases=releases, vendors=keys)

    @router.get(f"{CONSOLE_PREFIX}/rollouts", name="console.rollouts")
    def rollouts_page(request: Request, who: viewer) -> HTMLResponse:
        with _answered():
            stored = pages.rollouts().rollouts()
        rows = [(s, _counts(s.rollout.terminals)) for s in stored]
        return _render(request, "rollouts.html", who, rows=rows)

    def form_page(
        request: Request,
        who: ConsoleUser,
        form: Mapping[str, str],
        *,
        status: int = 200,
        problem: str | None = None,
        preview: int | None = None,
    ) -> HTMLResponse:
        with _answered():
            targets = verified()
        return _render(
            request, "rollout_new.html", who, status, form={**_DEFAULTS, **form},
            targets=targets, selector_keys=SELECTOR_KEYS, preview=preview,
            problem=problem,
        )  # fmt: skip

    @router.get(f"{CONSOLE_PREFIX}/rollouts/new", name="console.rollout_form")
    def new_rollout_page(request: Request, who: operator) -> HTMLResponse:
        return form_page(request, who, {})

    def previewed(request: Request, who: ConsoleUser, form: Mapping[str, str]) -> HTMLResponse:
        with _answered():
            count = len(pages.rollouts().matching(selector_form(form), form.get("target")))
        return form_page(request, who, form, preview=count)

    @router.post(f"{CONSOLE_PREFIX}/rollouts/preview", name="console.rollout_preview")
    async def preview(request: Request, who: operator) -> HTMLResponse:
        form = await _checked_form(request, who)
        # the selector walks the whole fleet: in a worker thread, like every read here
        return await anyio.to_thread.run_sync(lambda: previewed(request, who, form))

    def created(request: Request, who: ConsoleUser, form: Mapping[str, str]) -> Response:
        try:
            body = rollout_form(form)
            create_rollout(pages.rollouts(), body, who.principal)
        except RolloutConflictError as exc:
            return form_page(request, who, form, status=409, problem=exc.reason)
        except ValueError as exc:  # RolloutFormError, or the planner's checks of the definition
            return form_page(request, who, form, status=422, problem=str(exc))
        except StorageError as exc:
            raise _unavailable(exc) from None
        return RedirectResponse(f"{CONSOLE_PREFIX}/rollouts/{body.rollout_id}", status_code=303)

    @router.post(f"{CONSOLE_PREFIX}/rollouts", name="rollout.create")
    async def create(request: Request, who: operator) -> Response:
        form = await _checked_form(request, who)
        # the rollout and its release, as the API's create names them
        rollout_id = form.get("rollout_id", "").strip()[:64] or None
        note_audit(request, target=rollout_id, release=form.get("target", "")[:120])
        return await anyio.to_thread.run_sync(lambda: created(request, who, form))

    def rollout_page(
        request: Request, who: ConsoleUser, rollout_id: str, *, status: int = 200,
        problem: Refusal | None = None,
    ) -> HTMLResponse:  # fmt: skip
        with _answered():
            stored: StoredRollout = pages.rollouts().stored(rollout_id)
        rollout = stored.rollout
        return _render(
            request, "rollout.html", who, status, s=stored, r=rollout,
            phases=_phase_rows(rollout), problem=problem,
            counts=_counts(rollout.terminals),
            refresh=None if rollout.status in _SETTLED else _REFRESH_S,
            auto_refresh=AUTO_REFRESH_QUERY,
            own=rollout.definition.created_by == who.principal.actor,
        )  # fmt: skip

    @router.get(f"{CONSOLE_PREFIX}/rollouts/{{rollout_id}}", name="console.rollout")
    def rollout_view(request: Request, who: viewer, rollout_id: _ROLLOUT_ID) -> HTMLResponse:
        return rollout_page(request, who, rollout_id)

    def applied(request: Request, who: ConsoleUser, rollout_id: str, verb: str) -> Response:
        try:
            with _answered():
                pages.rollouts().apply(rollout_id, ROLLOUT_EVENTS[verb](who.principal))
        except RolloutConflictError as exc:
            return rollout_page(
                request, who, rollout_id, status=409, problem=refusal_sentence(exc.reason)
            )
        return RedirectResponse(f"{CONSOLE_PREFIX}/rollouts/{rollout_id}", status_code=303)

    def event_route(verb: str) -> None:
        @router.post(f"{CONSOLE_PREFIX}/rollouts/{{rollout_id}}/{verb}", name=f"rollout.{verb}")
        async def event(request: Request, who: operator, rollout_id: _ROLLOUT_ID) -> Response:
            await _checked_form(request, who)
            return await anyio.to_thread.run_sync(lambda: applied(request, who, rollout_id, verb))

    for verb in ROLLOUT_EVENTS:
        event_route(verb)
    return router
