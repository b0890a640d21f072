"""Rollouts over the API (issue 11): an operator creates, approves, pauses, resumes, cancels
and opens a manual gate; a viewer reads.

- ``POST /api/v1/rollouts`` (operator): a new rollout awaiting approval; the target must be
  a verified release of the TUF repository (else 409 ``target_not_verified``); its id may
  not be a word of the console's rollout routes (``RESERVED_ROLLOUT_IDS``: 422).
- ``POST /api/v1/rollouts/{id}/approve|pause|resume|cancel|gate`` (operator): one planner
  event by the caller; the planner refusing it (approval by the rollout's creator, an
  illegal transition) answers 409 ``rollout_conflict`` with its reason.
- ``GET /api/v1/rollouts`` and ``GET /api/v1/rollouts/{id}`` (viewer): definition, status,
  phase, per-state counts of the planner's terminals.

Every route carries ``name=`` (the audit log's action). Decisions are the planner's
(``server.rollout_planner``) through ``server.rollout_service``; a database error answers 503.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from server.access import Principal, Role
from server.access_api import note_audit, require
from server.errors import ApiError, StorageError
from server.rollout_codec import definition_from_json, definition_to_json
from server.rollout_planner import (
    Approve,
    Cancel,
    Event,
    OpenGate,
    Pause,
    Resume,
    Rollout,
)
from server.rollout_service import (
    RolloutConflictError,
    RolloutNotFoundError,
    RolloutService,
)
from server.terminal_registry import MAX_TAGS, TAG_PATTERN

__all__ = [
    "RESERVED_ROLLOUT_IDS",
    "ROLLOUT_EVENTS",
    "ROLLOUT_ID_PATTERN",
    "PhaseIn",
    "RolloutCreate",
    "SelectorIn",
    "create_rollout",
    "rollout_router",
]

log = logging.getLogger(__name__)

ROLLOUT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESERVED_ROLLOUT_IDS: Final = frozenset({"new", "preview"})
"""The console's fixed words under ``/console/rollouts/`` (``server.console.rollout_pages``):
a rollout with one as its id would have no page of its own, so none may take one."""


def _not_reserved(rollout_id: str) -> str:
    if rollout_id.lower() in RESERVED_ROLLOUT_IDS:
        raise ValueError(f"{rollout_id!r} is a console route word; choose another id")
    return rollout_id


_TAG = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
_ROLLOUT_ID = Annotated[str, Path(pattern=ROLLOUT_ID_PATTERN)]


class PhaseIn(BaseModel):
    size: int = Field(ge=1, le=10**6)
    unit: Literal["count", "percent"] = "percent"
    gate: Literal["manual"] | float = Field(
        default=0.0, description="'manual' or the delay in seconds after the previous phase"
    )


class SelectorIn(BaseModel):
    region: str | None = Field(default=None, max_length=64)
    hall: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=64)
    tags: list[_TAG] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TAGS,
        description="the terminal must carry every one of these operator tags",
    )
    current_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the version of the release's package the terminal reports now "
        "(a terminal not reporting that package does not match)",
    )


class RolloutCreate(BaseModel):
    rollout_id: Annotated[str, AfterValidator(_not_reserved)] = Field(pattern=ROLLOUT_ID_PATTERN)
    target: str = Field(max_length=255, description="a verified TUF target path")
    selector: SelectorIn = Field(default_factory=SelectorIn)
    phases: list[PhaseIn] = Field(min_length=1, max_length=20)
    success_threshold: float = Field(ge=0, le=1)
    abort_failure_ratio: float = Field(ge=0, le=1)
    abort_min_decided: int = Field(ge=1)
    terminal_timeout_s: float = Field(gt=0, le=7 * 86400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=60.0, ge=0)
    retry_backoff_max_s: float = Field(default=3600.0, ge=0)
    install_while_open: bool = Field(
        default=False,
        description="install even while the hall is open (default: only in its closed window)",
    )


class RolloutPublic(BaseModel):
    rollout_id: str
    status: str
    pause_reason: str | None
    phase: int
    gate_open: bool
    created_by: str
    approved_by: str | None
    definition: dict[str, Any]
    counts: dict[str, int] = Field(description="terminals per planner state")


class RolloutList(BaseModel):
    rollouts: list[RolloutPublic]


def _public(rollout: Rollout) -> RolloutPublic:
    d = rollout.definition
    return RolloutPublic(
        rollout_id=d.rollout_id,
        status=rollout.status.value,
        pause_reason=None if rollout.pause_reason is None else rollout.pause_reason.value,
        phase=rollout.phase,
        gate_open=rollout.gate_open,
        created_by=d.created_by,
        approved_by=rollout.approved_by,
        definition=definition_to_json(d),
        counts=dict(Counter(t.state.value for t in rollout.terminals)),
    )


ROLLOUT_EVENTS: Final[Mapping[str, Callable[[Principal], Event]]] = {
    "approve": lambda who: Approve(by=who.actor, role=who.role),
    "pause": lambda who: Pause(by=who.actor),
    "resume": lambda who: Resume(by=who.actor),
    "cancel": lambda who: Cancel(by=who.actor),
    "gate": lambda who: OpenGate(by=who.actor),
}
"""The operator events by verb (``POST .../{verb}``), for the API and the console alike."""

_EVENT_SUMMARIES: Final = {
    "approve": "Approve (someone other than the creator)",
    "pause": "Pause: no new notifications",
    "resume": "Resume a paused rollout",
    "cancel": "Cancel: final, nothing new sent",
    "gate": "Open the current manual gate",
}


def create_rollout(service: RolloutService, body: RolloutCreate, who: Principal) -> Rollout:
    """Create the rollout ``body`` describes, created by ``who``: the API's and the
    console's one way. Raises what ``RolloutService.create`` raises."""
    doc = {
        "rollout_id": body.rollout_id,
        "target": body.target,
        "created_by": who.actor,
        "phases": [
            {
                "size": p.size,
                "unit": p.unit,
                "gate": p.gate if p.gate == "manual" else {"delay_s": p.gate},
            }
            for p in body.phases
        ],
        "success_threshold": body.success_threshold,
        "abort": {
            "failure_ratio": body.abort_failure_ratio,
            "min_decided": body.abort_min_decided,
        },
        "terminal_timeout_s": body.terminal_timeout_s,
        "max_attempts": body.max_attempts,
        "retry_backoff_s": body.retry_backoff_s,
        "retry_backoff_max_s": body.retry_backoff_max_s,
        "install_while_open": body.install_while_open,
    }
    selector = body.selector.model_dump(exclude_none=True)
    return service.create(definition_from_json(doc), selector)


@contextmanager
def _answered() -> Iterator[None]:
    try:
        yield
    except RolloutNotFoundError as exc:
        raise ApiError(404, "no_rollout", f"no rollout {exc}") from None
    except RolloutConflictError as exc:
        raise ApiError(409, "rollout_conflict", exc.reason) from None
    except ValueError as exc:
        raise ApiError(422, "invalid_rollout", str(exc)) from None
    except StorageError as exc:
        log.warning("rollouts unavailable: %s", exc)
        raise ApiError(503, "database_unavailable", str(exc)) from None


def rollout_router(service: Callable[[], RolloutService]) -> APIRouter:
    """The rollout routes over ``service()`` (called per request)."""
    router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])
    operator = Annotated[Principal, Depends(require(Role.OPERATOR))]

    @router.post(
        "",
        response_model=RolloutPublic,
        status_code=201,
        name="rollout.create",
        summary="Create a rollout (awaits another person's approval)",
    )
    def create(body: RolloutCreate, who: operator, request: Request) -> RolloutPublic:
        note_audit(request, target=body.rollout_id, release=body.target[:120])
        with _answered():
            return _public(create_rollout(service(), body, who))

    def _event_route(verb: str, summary: str) -> None:
        make = ROLLOUT_EVENTS[verb]

        @router.post(
            f"/{{rollout_id}}/{verb}",
            response_model=RolloutPublic,
            name=f"rollout.{verb}",
            summary=summary,
        )
        def event(rollout_id: _ROLLOUT_ID, who: operator) -> RolloutPublic:
            with _answered():
                return _public(service().apply(rollout_id, make(who)))

    for verb, summary in _EVENT_SUMMARIES.items():
        _event_route(verb, summary)

    @router.get(
        "",
        response_model=RolloutList,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="Rollouts, newest first",
    )
    def list_rollouts() -> RolloutList:
        with _answered():
            return RolloutList(rollouts=[_public(s.rollout) for s in service().rollouts()])

    @router.get(
        "/{rollout_id}",
        response_model=RolloutPublic,
        dependencies=[Depends(require(Role.VIEWER))],
        summary="One rollout",
    )
    def get_rollout(rollout_id: _ROLLOUT_ID) -> RolloutPublic:
        with _answered():
            return _public(service().get(rollout_id))

    return router
