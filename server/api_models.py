"""The HTTP API's public response models (what clients see), separate from tables and wire.

Pure pydantic models plus the functions that build them from fleet-state views.
The public models are the API's contract (with descriptions for OpenAPI) and
are built from the read models (``server.fleet_views``) by attribute name, so a
field is never copied by hand; ``tests/unit/test_api_models.py`` checks every
public field has a source. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol.messages import PeripheralCondition, PeripheralKind, TerminalState
from server.fleet_views import HallSummary, OfflineReason, TerminalView, Transition
from server.health import Health, closed_or
from server.maintenance_models import OperatorStatePublic
from server.records import EventRecord

__all__ = [
    "DecommissionPublic",
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
    "TransitionsPublic",
    "event_public",
    "events_public",
    "hall_public",
    "terminal_detail_public",
    "terminal_public",
    "transition_public",
    "transitions_public",
]


class ErrorPublic(BaseModel):
    error: str = Field(description="machine-readable code: not_found, invalid_request, ...")
    message: str
    detail: list[dict[str, object]] | None = None


class _FromView(BaseModel):
    """Built from a read model's attributes by name (``model_validate(view)``): the fields
    are the read model's, so nothing is copied field by field."""

    model_config = ConfigDict(from_attributes=True)


class PeripheralPublic(_FromView):
    name: str
    kind: PeripheralKind
    condition: PeripheralCondition
    fault_code: str | None
    detail: str | None
    since: datetime = Field(description="when the condition last changed (device time)")


class TerminalPublic(_FromView):
    id: str
    hall: str | None
    region: str | None
    model: str | None
    state: TerminalState
    state_since: datetime = Field(description="when the terminal went online/offline (server)")
    offline_reason: str | None = Field(description="will, shutdown or timeout while offline")
    last_seen: datetime = Field(description="server time of the last sign of life")
    health: Health = Field(
        description="offline; closed (shut down cleanly while its hall is closed by its"
        " opening hours: not a problem); faulty (online, a peripheral that blocks service);"
        " warning (online, only paper low or an unknown state); ok. The same values as the"
        " metrics' kioskfleet_terminals{status} and the ?health= filter"
    )
    agent_version: str | None
    report_interval_s: float | None
    peripherals: list[PeripheralPublic]
    software: dict[str, str]


class TransitionPublic(_FromView):
    subject: str = Field(description='"connectivity" or the peripheral name')
    kind: str = Field(description='"connectivity" or the peripheral kind')
    from_state: str | None = Field(description="None when first seen")
    to_state: str
    fault_code: str | None
    reason: str | None
    occurred_at: datetime = Field(description="device time where the device said when")
    recorded_at: datetime = Field(description="server time")


class DeliveryPublic(_FromView):
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
    delivery: DeliveryPublic | None = Field(
        description="for operator and admin tokens; null for a viewer"
    )
    transitions: list[TransitionPublic] = Field(description="newest first")
    operator: OperatorStatePublic | None = Field(
        default=None,
        description="its active maintenance windows (its own, its hall's) and the acks of its"
        " current problems",
    )
    services_available: list[str] = Field(
        default=[],
        description="catalogued service codes the terminal can offer now: online, and every"
        " peripheral the service needs working (GET /api/v1/services)",
    )


class EventPublic(_FromView):
    boot_id: str | None = Field(description="its stream (operator and admin; null for a viewer)")
    seq: int | None = Field(description="its place in the stream (operator and admin)")
    type: str = Field(description="peripheral_changed, boot, ...")
    sent_at: datetime = Field(description="device time")
    received_at: datetime = Field(description="server time")
    body: dict[str, Any] = Field(description="the event body as the terminal sent it")


class EventsPublic(BaseModel):
    items: list[EventPublic] = Field(description="newest first (by server time)")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class TransitionsPublic(BaseModel):
    items: list[TransitionPublic] = Field(description="newest first (by server time)")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class TerminalPagePublic(BaseModel):
    items: list[TerminalPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
    total: int = Field(description="terminals matching the filter")


class ProblemCountPublic(_FromView):
    kind: PeripheralKind
    condition: PeripheralCondition
    count: int


class TerminalCountsPublic(_FromView):
    total: int
    online: int
    offline: int
    ok: int = Field(description="online, every peripheral ok")
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


class DecommissionPublic(BaseModel):
    terminal_id: str
    known: bool = Field(description="whether the fleet state held the terminal")
    last_state: TerminalPublic | None = Field(
        description="its state when it was removed (None if it was not known)"
    )


class ReadinessPublic(BaseModel):
    ready: bool
    reasons: list[str]


def terminal_public(v: TerminalView, *, hall_open: bool = True) -> TerminalPublic:
    """``v`` as the API shows it; ``hall_open`` False: its hall is closed by its opening
    hours, so a clean shutdown is ``closed`` (``server.health.closed_or``)."""
    public = TerminalPublic.model_validate(v)
    clean_shutdown = v.offline_reason is OfflineReason.SHUTDOWN
    health = closed_or(v.health, clean_shutdown=clean_shutdown, hall_open=hall_open)
    return public if health is v.health else public.model_copy(update={"health": health})


def transition_public(t: Transition) -> TransitionPublic:
    return TransitionPublic.model_validate(t)


def terminal_detail_public(
    v: TerminalView,
    history: list[Transition],
    *,
    with_delivery: bool = True,
    hall_open: bool = True,
    services_available: Sequence[str] = (),
) -> TerminalDetailPublic:
    return TerminalDetailPublic(
        **dict(terminal_public(v, hall_open=hall_open)),
        services_available=list(services_available),
        delivery=DeliveryPublic.model_validate(v) if with_delivery else None,
        transitions=[transition_public(t) for t in history],
    )


def event_public(e: EventRecord, *, with_delivery: bool = True) -> EventPublic:
    """``with_delivery`` False (a viewer): without the boot id and seq a forger needs."""
    public = EventPublic.model_validate(e)
    return public if with_delivery else public.model_copy(update={"boot_id": None, "seq": None})


def events_public(
    events: Sequence[EventRecord], next_cursor: str | None = None, *, with_delivery: bool = True
) -> EventsPublic:
    return EventsPublic(
        items=[event_public(e, with_delivery=with_delivery) for e in events],
        next_cursor=next_cursor,
    )


def transitions_public(
    transitions: Sequence[Transition], next_cursor: str | None = None
) -> TransitionsPublic:
    return TransitionsPublic(
        items=[transition_public(t) for t in transitions], next_cursor=next_cursor
    )


def hall_public(s: HallSummary) -> HallPublic:
    return HallPublic(
        region=s.region,
        hall=s.hall,
        terminals=TerminalCountsPublic.model_validate(s),
        terminals_with_problems=s.with_peripheral_problems,
        peripheral_problems=[ProblemCountPublic.model_validate(p) for p in s.peripheral_problems],
    )
