"""What the ingest hands the database writer: event records and write batches.

Pure data, so that the ingest and the batched writer need nothing of the
database layer (``server.storage`` turns these into rows). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from server.fleet_views import TerminalView, Transition
from server.stream_gaps import Gaps

if TYPE_CHECKING:  # a type only: this module stays free of the database layer
    from server.lease_fence import Fence

__all__ = ["EventRecord", "UpdateRecord", "UsageRecord", "WriteBatch"]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One accepted event as stored (the ingest builds it; ``body`` is the wire body as JSON)."""

    terminal_id: str
    boot_id: str
    seq: int
    type: str
    sent_at: datetime
    received_at: datetime
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """One accepted ``kf.update`` as stored in ``update_status`` (see server.update_status_store).

    ``occurred_at`` is the device's ``sent_at``: the agent sends one message per state change.
    """

    terminal_id: str
    boot_id: str
    seq: int
    rollout_id: str | None
    directive_seq: int
    state: str
    reason: str | None
    detail: str | None
    occurred_at: datetime
    received_at: datetime
    attempt: int | None = None  # the directive's attempt, echoed (None: an older agent)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One accepted ``kf.usage`` as stored in ``usage_event`` (see server.usage_store).

    ``occurred_at`` is the device's ``sent_at`` (the agent stamps it when the kiosk
    application reports the finished transaction). No field can hold free text.
    """

    terminal_id: str
    boot_id: str
    seq: int
    service: str
    outcome: str
    cause: str | None
    duration_s: float
    pages: int
    occurred_at: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One flush: terminals ``removed`` (decommissioned: their rows go first, their history
    stays), latest state of ``terminals``, full peripheral sets of ``peripheral_ids``, new
    ``transitions``, ``events``, ``updates`` (update statuses) and ``usage`` (transactions)."""

    terminals: Sequence[TerminalView] = ()
    peripheral_ids: frozenset[str] = frozenset()
    transitions: Sequence[Transition] = field(default_factory=tuple)
    events: Sequence[EventRecord] = field(default_factory=tuple)
    updates: Sequence[UpdateRecord] = field(default_factory=tuple)
    usage: Sequence[UsageRecord] = field(default_factory=tuple)
    removed: frozenset[str] = frozenset()
    # Of ``terminals``, those whose rows exist and changed only in POSITION_FIELDS (a row
    # that turns out missing is written whole all the same).
    position_only: frozenset[str] = frozenset()
    # The offline sweep's transitions, each with the job lease's fence of the sweep's run:
    # written only while that fence holds (server.lease_fence).
    fenced_transitions: Sequence[tuple[Fence, Transition]] = field(default_factory=tuple)
    # The open sequence gaps of the terminals written whole (absent: none), stored with
    # their rows for a replica that takes them over (server.membership).
    open_gaps: Mapping[str, Gaps] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.terminals
            or self.peripheral_ids
            or self.transitions
            or self.events
            or self.updates
            or self.usage
            or self.removed
            or self.fenced_transitions
        )

    def row_count(self) -> int:
        """Rows this batch writes (terminals, their peripherals, transitions, events, removals)."""
        peripherals = sum(len(v.peripherals) for v in self.terminals if v.id in self.peripheral_ids)
        return (
            len(self.terminals)
            + peripherals
            + len(self.transitions)
            + len(self.fenced_transitions)
            + len(self.events)
            + len(self.updates)
            + len(self.usage)
            + len(self.removed)
        )
