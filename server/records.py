"""What the batched writer hands the store: one accepted event, and one flush's worth of rows.

Plain frozen values built by the ingest and the writer and read by the storage
adapter; the pure modules (``server.ingest``, ``server.write_behind``) import
them from here, so they never import the database layer. No I/O, no library
beyond the standard one and the fleet state's views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.fleet_state import TerminalView, Transition

__all__ = ["EventRecord", "WriteBatch"]


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
class WriteBatch:
    """One flush: latest state of ``terminals``, full peripheral sets of ``peripheral_ids``,
    new ``transitions`` and ``events``."""

    terminals: Sequence[TerminalView] = ()
    peripheral_ids: frozenset[str] = frozenset()
    transitions: Sequence[Transition] = field(default_factory=tuple)
    events: Sequence[EventRecord] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.terminals or self.peripheral_ids or self.transitions or self.events)

    def row_count(self) -> int:
        """Rows this batch writes (terminals, their peripherals, transitions, events)."""
        peripherals = sum(len(v.peripherals) for v in self.terminals if v.id in self.peripheral_ids)
        return len(self.terminals) + peripherals + len(self.transitions) + len(self.events)
