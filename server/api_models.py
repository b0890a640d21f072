"""The HTTP API's public response models (what clients see), separate from tables and wire.

Pure pydantic models plus the functions that build them from fleet-state views.
No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from protocol.messages import PeripheralCondition, PeripheralKind, TerminalState
from server.fleet_state import HallSummary, Health, Status, TerminalView, Transition
from server.storage import EventRecord

__all__ = [
    "DeliveryPublic",
    "ErrorPublic",
    "EventPublic",
    "EventsPublic",
    "HallPublic",
    "HallsPublic",
    "PeripheralPublic",
    "ProblemCountPublic",
    "ReadinessPublic",
    "TerminalCountsPublic",
    "TerminalDetailPublic",
    "TerminalPagePublic",
    "TerminalPublic",
    "TransitionPublic",
    "event_public",
    "events_public",
    "hall_public",
    "terminal_detail_public",
    "terminal_public",
    "transition_public",
]


class ErrorPublic(BaseModel):
    error: str = Field(description="machine-readable code: not_found, invalid_request, ...")
    message: str
    detail: list[dict[str, object]] | None = None


class PeripheralPublic(BaseModel):
    name: str
    kind: PeripheralKind
    condition: PeripheralCondition
    fault_code: str | None
    detail: str | None
    since: datetime = Field(description="when the condition last changed (device time)")


class TerminalPublic(BaseModel):
    id: str
    hall: str | None
    region: str | None
    model: str | None
    state: TerminalState
    state_since: datetime = Field(description="when the terminal went online/offline (server)")
    offline_reason: str | None = Field(description="will, shutdown or timeout while offline")
    last_seen: datetime = Field(description="server time of the last sign of life")
    status: Status = Field(description="offline; degraded (a peripheral not ok); ok")
    health: Health = Field(
        description="offline; faulty (online, a peripheral that blocks service); warning"
        " (online, only paper low or an unknown state); ok. ``status`` folds warning and"
        " faulty into degraded"
    )
    agent_version: str | None
    report_interval_s: float | None
    boot_id: str | None
    peripherals: list[PeripheralPublic]
    software: dict[str, str]


class TransitionPublic(BaseModel):
    subject: str = Field(description='"connectivity" or the peripheral name')
    kind: str = Field(description='"connectivity" or the peripheral kind')
    from_state: str | None = Field(description="None when first seen")
    to_state: str
    fault_code: str | None
    reason: str | None
    occurred_at: datetime = Field(description="device time where the device said when")
    recorded_at: datetime = Field(description="server time")


class DeliveryPublic(BaseModel):
    """What reached the server from this terminal (cumulative, survives server restarts)."""

    boot_id: str | None = Field(description="the terminal's current sequence stream")
    last_seq: int | None = Field(description="highest seq accepted in that stream")
    reports_received: int
    events_received: int
    seq_gaps: int = Field(description="sequence numbers never received, all streams")
    dropped_reports: int = Field(
        description="reports the terminal's outbox dropped on purpose (its count for the"
        " current boot_id); gaps beyond them are losses"
    )


class TerminalDetailPublic(TerminalPublic):
    delivery: DeliveryPublic
    transitions: list[TransitionPublic] = Field(description="newest first")


class EventPublic(BaseModel):
    boot_id: str
    seq: int
    type: str = Field(description="peripheral_changed, boot, ...")
    sent_at: datetime = Field(description="device time")
    received_at: datetime = Field(description="server time")
    body: dict[str, Any] = Field(description="the event body as the terminal sent it")


class EventsPublic(BaseModel):
    items: list[EventPublic] = Field(description="newest first (by server time)")


class TerminalPagePublic(BaseModel):
    items: list[TerminalPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
    total: int = Field(description="terminals matching the filter")


class ProblemCountPublic(BaseModel):
    kind: PeripheralKind
    condition: PeripheralCondition
    count: int


class TerminalCountsPublic(BaseModel):
    total: int
    online: int
    offline: int
    degraded: int = Field(description="online with a peripheral not ok (warning + faulty)")
    warning: int = Field(description="online, only non-blocking problems")
    faulty: int = Field(description="online, at least one peripheral that blocks service")


class HallPublic(BaseModel):
    region: str | None
    hall: str | None
    terminals: TerminalCountsPublic
    terminals_with_problems: int = Field(description="terminals with a peripheral not ok")
    peripheral_problems: list[ProblemCountPublic]


class HallsPublic(BaseModel):
    items: list[HallPublic]


class ReadinessPublic(BaseModel):
    ready: bool
    reasons: list[str]


def terminal_public(v: TerminalView) -> TerminalPublic:
    return TerminalPublic(
        id=v.id,
        hall=v.hall,
        region=v.region,
        model=v.model,
        state=TerminalState.ONLINE if v.online else TerminalState.OFFLINE,
        state_since=v.state_since,
        offline_reason=None if v.offline_reason is None else v.offline_reason.value,
        last_seen=v.last_seen,
        status=v.status,
        health=v.health,
        agent_version=v.agent_version,
        report_interval_s=v.report_interval_s,
        boot_id=v.boot_id,
        peripherals=[
            PeripheralPublic(
                name=p.name,
                kind=p.kind,
                condition=p.condition,
                fault_code=p.fault_code,
                detail=p.detail,
                since=p.since,
            )
            for p in v.peripherals
        ],
        software=dict(v.software),
    )


def transition_public(t: Transition) -> TransitionPublic:
    return TransitionPublic(
        subject=t.subject,
        kind=t.kind,
        from_state=t.from_state,
        to_state=t.to_state,
        fault_code=t.fault_code,
        reason=t.reason,
        occurred_at=t.occurred_at,
        recorded_at=t.recorded_at,
    )


def terminal_detail_public(v: TerminalView, history: list[Transition]) -> TerminalDetailPublic:
    return TerminalDetailPublic(
        **dict(terminal_public(v)),
        delivery=DeliveryPublic(
            boot_id=v.boot_id,
            last_seq=v.last_seq,
            reports_received=v.reports_received,
            events_received=v.events_received,
            seq_gaps=v.seq_gaps,
            dropped_reports=v.dropped_reports,
        ),
        transitions=[transition_public(t) for t in history],
    )


def event_public(e: EventRecord) -> EventPublic:
    return EventPublic(
        boot_id=e.boot_id,
        seq=e.seq,
        type=e.type,
        sent_at=e.sent_at,
        received_at=e.received_at,
        body=dict(e.body),
    )


def events_public(events: Sequence[EventRecord]) -> EventsPublic:
    return EventsPublic(items=[event_public(e) for e in events])


def hall_public(s: HallSummary) -> HallPublic:
    return HallPublic(
        region=s.region,
        hall=s.hall,
        terminals=TerminalCountsPublic(
            total=s.total,
            online=s.online,
            offline=s.offline,
            degraded=s.degraded,
            warning=s.warning,
            faulty=s.faulty,
        ),
        terminals_with_problems=s.with_peripheral_problems,
        peripheral_problems=[
            ProblemCountPublic(kind=p.kind, condition=p.condition, count=p.count)
            for p in s.peripheral_problems
        ],
    )
