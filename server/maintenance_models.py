"""The public (API) models of maintenance windows and problem acknowledgements.

Kept apart from ``server.maintenance_api`` so that ``server.api_models`` (a terminal's
detail shows its maintenance and acks) can use them without importing the routes.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from protocol.messages import PeripheralCondition, PeripheralKind
from server.maintenance import MaintenanceWindow, ProblemAck, Scope

__all__ = [
    "MaintenanceListPublic",
    "MaintenanceWindowPublic",
    "OperatorStatePublic",
    "ProblemAckPublic",
    "ProblemPublic",
    "ProblemsPublic",
    "ack_public",
    "window_public",
]


class MaintenanceWindowPublic(BaseModel):
    scope: Scope = Field(description="terminal or hall")
    target: str = Field(description="the terminal id or the hall name")
    reason: str
    until: datetime = Field(description="the window ends by itself then")
    started_at: datetime
    started_by: str = Field(description="who started it: token:<name>")


class MaintenanceListPublic(BaseModel):
    items: list[MaintenanceWindowPublic] = Field(description="active windows, by scope, target")


class ProblemAckPublic(BaseModel):
    peripheral: str
    problem_since: datetime = Field(description="when the acknowledged problem began")
    condition: PeripheralCondition = Field(description="its condition when acknowledged")
    note: str
    assignee: str | None
    acked_at: datetime
    acked_by: str = Field(description="who acknowledged it: token:<name>")


class OperatorStatePublic(BaseModel):
    """What operators did about a terminal: its maintenance, its acknowledged problems."""

    maintenance: list[MaintenanceWindowPublic] = Field(
        description="active windows covering it: its own and its hall's"
    )
    acknowledged: list[ProblemAckPublic] = Field(
        description="acks of its current problems (an ack ends with its problem)"
    )


class ProblemPublic(BaseModel):
    terminal_id: str
    hall: str | None
    region: str | None
    peripheral: str
    kind: PeripheralKind
    condition: PeripheralCondition
    since: datetime = Field(description="when this problem began")
    fault_code: str | None
    in_maintenance: bool = Field(description="its terminal or hall is in maintenance: no alert")
    ack: ProblemAckPublic | None = Field(description="null: nobody acknowledged it yet")


class ProblemsPublic(BaseModel):
    items: list[ProblemPublic] = Field(description="by terminal id, peripheral")
    total: int = Field(description="current problems in all (items may be fewer: limit)")


def window_public(w: MaintenanceWindow) -> MaintenanceWindowPublic:
    return MaintenanceWindowPublic(
        scope=w.scope,
        target=w.target,
        reason=w.reason,
        until=w.until,
        started_at=w.started_at,
        started_by=w.started_by,
    )


def ack_public(a: ProblemAck) -> ProblemAckPublic:
    return ProblemAckPublic(
        peripheral=a.peripheral,
        problem_since=a.problem_since,
        condition=a.condition,
        note=a.note,
        assignee=a.assignee,
        acked_at=a.acked_at,
        acked_by=a.acked_by,
    )
