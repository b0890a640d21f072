"""The fleet state's frozen read models: what readers get, what the database stores.

Readers (the API, the metrics collector, the database writer) never see the
fleet state's live records, only these frozen copies. ``TerminalView`` is the
one declaration of a terminal's fields: the live record
(``server.terminal_rules.TerminalRecord``), the table mapping
(``server.storage``) and the API models (``server.api_models``) are derived
from it by field name, and tests fail when one of them lacks a field.
``PeripheralView`` and ``Transition`` are the same for peripherals and
transitions. Pure data: no I/O, no lock, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from protocol.messages import PeripheralCondition, PeripheralKind, TerminalState
from server.health import Health, terminal_health

__all__ = [
    "AGENT_PACKAGE",
    "CONNECTIVITY",
    "CONNECTIVITY_REASONS",
    "POSITION_FIELDS",
    "REMOVED",
    "FleetSummary",
    "HallSummary",
    "OfflineReason",
    "Outcome",
    "Page",
    "PeripheralCount",
    "PeripheralView",
    "ProblemTerminal",
    "SoftwareCount",
    "TerminalFilter",
    "TerminalView",
    "Transition",
    "Verdict",
]

CONNECTIVITY: Final = "connectivity"
"""``subject`` and ``kind`` of a transition between online and offline."""
REMOVED: Final = "removed"
"""``to_state`` of a peripheral that disappeared from the terminal's reports."""
AGENT_PACKAGE: Final = "kioskfleet-agent"
"""Package name under which the agent's own version counts as installed software."""


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already applied (same boot, seq not newer; retained re-delivery)
    STALE = "stale"  # superseded (previous boot; retained online older than what we know)
    REFUSED = "refused"  # breaks a bound the rules keep (``Outcome.reason`` says which)


class OfflineReason(StrEnum):
    WILL = "will"  # the broker published the terminal's will (connection lost)
    SHUTDOWN = "shutdown"  # the agent said it is shutting down
    TIMEOUT = "timeout"  # the server heard nothing for too long


CONNECTIVITY_REASONS: Final = (*(str(r.value) for r in OfflineReason), "report", "event", "connect")
"""Every ``Transition.reason`` of a connectivity change: offline ones, then what brought the
terminal online (``server.terminal_rules``: a report, an event, an online message)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of a terminal's connectivity or of one peripheral's condition."""

    terminal_id: str
    subject: str  # CONNECTIVITY or the peripheral name
    kind: str  # CONNECTIVITY or the peripheral kind
    from_state: str | None  # None: first sighting
    to_state: str
    occurred_at: datetime  # device time where the device said when; else server time
    recorded_at: datetime  # server time
    fault_code: str | None = None
    reason: str | None = None  # connectivity only: will, shutdown, timeout, report, event, connect
    # The message that caused it, the same on every replica that applies it (``transition_cause``);
    # None for what the server decided (the offline sweep): the storage key is this, subject, to_state.
    cause: str | None = None


POSITION_FIELDS: Final = (
    "last_seen",
    "last_sent_at",
    "last_seq",
    "reports_received",
    "events_received",
)
"""The ``TerminalView`` fields an accepted stream message changes when it changes nothing
else (no new stream, gap, transition, identity, peripheral or drop count)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``FleetState.apply`` did with one message."""

    verdict: Verdict
    missing: int = 0  # sequence numbers of this stream never received before this message
    transitions: tuple[Transition, ...] = ()
    peripherals_changed: bool = False  # the peripheral set must be rewritten
    retally: bool = False  # the terminal's share of the fleet tallies may have changed
    # Accepted, and of the stored fields only POSITION_FIELDS changed (a heartbeat): the
    # writer then updates just those columns of the terminal's row.
    position_only: bool = False
    reason: str | None = None  # REFUSED only: the reject reason (``seq_jump``)
    # Accepted as a gap fill (a seq below the position, inside an open gap): history only.
    filled: bool = False
    # A filled update status that a later one of its stream already followed: not the
    # terminal's latest update state, so it must not be stored as one.
    superseded: bool = False

    @property
    def accepted(self) -> bool:
        return self.verdict is Verdict.ACCEPTED


@dataclass(frozen=True, slots=True)
class PeripheralView:
    name: str
    kind: PeripheralKind
    condition: PeripheralCondition
    since: datetime
    fault_code: str | None = None
    detail: str | None = None

    @property
    def is_problem(self) -> bool:
        return self.condition is not PeripheralCondition.OK


@dataclass(frozen=True, slots=True)
class TerminalView:
    """A frozen copy of one terminal's latest state (what the API shows and the DB stores)."""

    id: str
    online: bool
    state_since: datetime  # when ``online`` last changed
    last_seen: datetime  # server time of the last message that showed the terminal alive
    first_seen: datetime
    hall: str | None = None
    region: str | None = None
    model: str | None = None
    offline_reason: OfflineReason | None = None
    last_sent_at: datetime | None = None  # device time of the newest accepted message
    boot_id: str | None = None
    last_seq: int | None = None
    report_interval_s: float | None = None
    agent_version: str | None = None
    software: Mapping[str, str] = field(default_factory=dict)
    peripherals: tuple[PeripheralView, ...] = ()
    prev_boot_id: str | None = None  # the stream replaced by ``boot_id`` (its stragglers are stale)
    reports_received: int = 0  # accepted reports, all streams
    events_received: int = 0  # accepted events, all streams
    seq_gaps: int = 0  # sequence numbers never received, all streams
    dropped_reports: int = 0  # reports the outbox dropped on purpose, current boot_id

    @property
    def state(self) -> TerminalState:
        return TerminalState.ONLINE if self.online else TerminalState.OFFLINE

    @property
    def health(self) -> Health:
        return terminal_health(self.online, ((p.kind, p.condition) for p in self.peripherals))

    @property
    def has_problem(self) -> bool:
        """Offline or a peripheral not ok: the terminals that get per-terminal metric series."""
        return not self.online or any(p.is_problem for p in self.peripherals)


@dataclass(frozen=True, slots=True)
class TerminalFilter:
    """Every field set must match; ``peripheral_kind`` and ``condition`` match one peripheral;
    ``health`` matches a terminal whose health is one of the set; a terminal of one of
    ``closed_halls`` (closed now by their opening hours, computed by the caller outside
    the fleet lock) that shut down cleanly has health ``closed`` (``closed_or``)."""

    region: str | None = None
    hall: str | None = None
    online: bool | None = None
    peripheral_kind: PeripheralKind | None = None
    condition: PeripheralCondition | None = None
    health: frozenset[Health] | None = None
    closed_halls: frozenset[str | None] = frozenset()


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[TerminalView, ...]
    total: int  # matches of the filter over the whole fleet
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class PeripheralCount:
    """Peripherals of one kind in one condition."""

    kind: PeripheralKind
    condition: PeripheralCondition
    count: int


@dataclass(frozen=True, slots=True)
class HallSummary:
    region: str | None
    hall: str | None
    total: int
    online: int
    offline: int
    degraded: int  # online with a peripheral problem (warning + faulty)
    with_peripheral_problems: int  # online or not
    peripheral_problems: tuple[PeripheralCount, ...]  # conditions not ok
    online_peripheral_problems: tuple[PeripheralCount, ...] = ()  # those of online terminals
    warning: int = 0  # online, only non-blocking problems
    faulty: int = 0  # online, at least one blocking problem
    peripherals: tuple[PeripheralCount, ...] = ()  # every peripheral, ok included
    seq_gaps: int = 0  # sum of the hall's terminals' seq_gaps
    dropped_reports: int = 0  # sum of the hall's terminals' dropped_reports
    shut_down: int = 0  # offline after a clean shutdown (closed while the hall is closed)

    @property
    def ok(self) -> int:
        return self.online - self.degraded

    def by_health(self, *, hall_open: bool = True) -> dict[Health, int]:
        """Terminals of the hall by health; every ``Health`` is a key. While the hall is
        closed, those that shut down cleanly are ``closed`` instead of ``offline``."""
        closed = 0 if hall_open else self.shut_down
        return {
            Health.OK: self.ok,
            Health.WARNING: self.warning,
            Health.FAULTY: self.faulty,
            Health.OFFLINE: self.offline - closed,
            Health.CLOSED: closed,
        }


@dataclass(frozen=True, slots=True)
class SoftwareCount:
    """Terminals (online or not) that have ``version`` of ``package`` installed."""

    package: str
    version: str
    count: int


@dataclass(frozen=True, slots=True)
class ProblemTerminal:
    """What metrics need of a terminal that is offline or has a peripheral not ``ok``."""

    id: str
    hall: str | None
    region: str | None
    online: bool
    state_since: datetime  # when ``online`` last changed
    problems: tuple[PeripheralView, ...]  # its peripherals that are not ok, by name
    offline_reason: OfflineReason | None = None


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """One consistent reading of every tally (what a metrics scrape needs), taken under one lock."""

    halls: tuple[HallSummary, ...]
    software: tuple[SoftwareCount, ...]
    problem_terminals: tuple[ProblemTerminal, ...]  # by id; each hall's within its caps only
    lock_held_s: float = 0.0  # how long the reading held the fleet lock
