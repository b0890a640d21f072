"""Update statuses over the API (issue 11): where each terminal is with each rollout.

- ``GET /api/v1/terminals/{id}/updates`` (viewer): the terminal's update timeline, newest
  first (state, reason, detail, rollout, directive seq, device and server time), at most
  ``limit``; ``?rollout=`` keeps one rollout's statuses (the terminal's timeline in it).
- ``GET /api/v1/rollouts/{rollout_id}/terminals`` (viewer): each terminal's latest state in
  the rollout, in terminal-id order, ``limit`` per page from ``after`` (``next_after`` is
  the cursor for the next page, null on the last), and ``counts`` per state over all of
  the rollout's terminals.

Both read ``update_status`` (``server.update_status_store``); a database error answers 503
``database_unavailable``. Nothing here changes anything.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the handlers' annotations.
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from server.access import Principal, Role
from server.access_api import require
from server.errors import ApiError, StorageError
from server.records import UpdateRecord
from server.update_status_store import rollout_terminals, timeline

__all__ = ["update_status_router"]

log = logging.getLogger(__name__)

_ROLLOUT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_ROLLOUT_ID = Annotated[str, Path(pattern=_ROLLOUT_PATTERN)]


class UpdateStatusPublic(BaseModel):
    terminal_id: str
    rollout_id: str | None
    directive_seq: int
    attempt: int | None = Field(description="the directive's attempt (null: an older agent)")
    state: str = Field(description="one of the 14 states of protocol.update_status.UpdateState")
    reason: str | None
    detail: str | None
    occurred_at: datetime = Field(description="device time (the message's sent_at)")
    received_at: datetime = Field(description="server time")


class UpdateTimelinePublic(BaseModel):
    terminal_id: str
    updates: list[UpdateStatusPublic]


class RolloutTerminalsPublic(BaseModel):
    rollout_id: str
    counts: dict[str, int] = Field(description="terminals per latest state, whole rollout")
    terminals: list[UpdateStatusPublic]
    next_after: str | None = Field(description="pass as ?after= for the next page")


def _public(record: UpdateRecord) -> UpdateStatusPublic:
    return UpdateStatusPublic(
        terminal_id=record.terminal_id,
        rollout_id=record.rollout_id,
        directive_seq=record.directive_seq,
        attempt=record.attempt,
        state=record.state,
        reason=record.reason,
        detail=record.detail,
        occurred_at=record.occurred_at,
        received_at=record.received_at,
    )


def _unavailable(what: str, exc: StorageError) -> ApiError:
    log.warning("%s unavailable: %s", what, exc)
    return ApiError(503, "database_unavailable", str(exc))


def update_status_router(
    engine: Callable[[], Engine], *, limit_default: int = 100, limit_max: int = 1000
) -> APIRouter:
    """The two read routes over the ``update_status`` table of ``engine()`` (called per
    request: the storage opens after the app is built; it raises StorageError when closed)."""
    router = APIRouter(tags=["updates"])

    @router.get(
        "/api/v1/terminals/{terminal_id}/updates",
        response_model=UpdateTimelinePublic,
        summary="One terminal's update statuses, newest first",
    )
    def terminal_updates(
        terminal_id: Annotated[str, Path(max_length=64)],
        who: Annotated[Principal, Depends(require(Role.VIEWER))],
        limit: Annotated[int, Query(ge=1, le=limit_max)] = limit_default,
        rollout: Annotated[str | None, Query(pattern=_ROLLOUT_PATTERN)] = None,
    ) -> UpdateTimelinePublic:
        try:
            records = timeline(engine(), terminal_id, limit, rollout)
        except StorageError as exc:
            raise _unavailable(f"updates of {terminal_id}", exc) from None
        return UpdateTimelinePublic(terminal_id=terminal_id, updates=[_public(r) for r in records])

    @router.get(
        "/api/v1/rollouts/{rollout_id}/terminals",
        response_model=RolloutTerminalsPublic,
        summary="Each terminal's latest state in one rollout, with counts per state",
    )
    def rollout_terminal_states(
        rollout_id: _ROLLOUT_ID,
        who: Annotated[Principal, Depends(require(Role.VIEWER))],
        limit: Annotated[int, Query(ge=1, le=limit_max)] = limit_default,
        after: Annotated[str | None, Query(max_length=64)] = None,
    ) -> RolloutTerminalsPublic:
        try:
            page = rollout_terminals(engine(), rollout_id, limit, after)
        except StorageError as exc:
            raise _unavailable(f"terminals of rollout {rollout_id}", exc) from None
        return RolloutTerminalsPublic(
            rollout_id=rollout_id,
            counts=page.counts,
            terminals=[_public(r) for r in page.terminals],
            next_after=page.next_after,
        )

    return router
