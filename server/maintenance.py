"""Operator actions on the fleet's problems: maintenance windows and acknowledgements.

A **maintenance window** puts one terminal or a whole hall in maintenance for a reason
until a time (``MaintenanceWindow``). While a window is active (``now < until``) the
metrics collector exports the window (``kioskfleet_terminal_maintenance``,
``kioskfleet_hall_maintenance``) and stops exporting the terminal's problem series
(offline, peripheral problems), so no alert fires for it: suppressed at the source
(docs/operations.md, "Maintenance and acknowledgements"). A window ends by itself at
``until``: nothing has to run for that, every reader compares with its clock.

An **acknowledgement** (``ProblemAck``) says someone knows about one peripheral's
current problem (a note, an assignee). It names the problem by the time it began (the
peripheral's ``since``): the ack holds while that same problem lasts; once the
peripheral is ``ok`` again, or in a later problem (a new ``since``), the ack no longer
applies (``ack_applies``). Acked problems still alert (the choice in the doc above).

``MaintenanceLimits`` bounds text, duration and counts. ``check_window`` and
``check_ack`` are the decisions the API applies; ``ActiveMaintenance`` is what is in
maintenance at one instant. Pure: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from protocol.messages import PeripheralCondition
from server.fleet_views import PeripheralView

__all__ = [
    "ActiveMaintenance",
    "MaintenanceLimits",
    "MaintenanceRefusal",
    "MaintenanceWindow",
    "ProblemAck",
    "Scope",
    "ack_applies",
    "active_maintenance",
    "check_ack",
    "check_window",
]


class Scope(StrEnum):
    """What a window covers: one terminal or every terminal of a hall."""

    TERMINAL = "terminal"
    HALL = "hall"


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """``target`` (a terminal id or a hall name) is in maintenance from ``started_at`` until
    ``until`` (aware, UTC) for ``reason``; ``started_by`` is the actor who set it."""

    scope: Scope
    target: str
    reason: str
    until: datetime
    started_at: datetime
    started_by: str

    def active(self, now: datetime) -> bool:
        return self.started_at <= now < self.until


@dataclass(frozen=True, slots=True)
class ProblemAck:
    """``acked_by`` knows about the problem of ``peripheral`` on ``terminal_id`` that began
    at ``problem_since`` (then in ``condition``); ``assignee`` (optional) is to fix it."""

    terminal_id: str
    peripheral: str
    problem_since: datetime
    condition: PeripheralCondition
    note: str
    assignee: str | None
    acked_at: datetime
    acked_by: str


@dataclass(frozen=True, slots=True)
class MaintenanceLimits:
    """Bounds of what operators may store (settings ``maintenance_*``)."""

    max_reason: int = 500  # characters of a window's reason and of an ack's note
    max_assignee: int = 128
    max_duration: timedelta = timedelta(days=30)  # until - now
    max_windows: int = 10_000  # active windows, fleet-wide (one per terminal or hall)
    max_acks_per_terminal: int = 32


class MaintenanceRefusal(StrEnum):
    """Why ``check_window``/``check_ack`` refuse (the API's error code)."""

    UNTIL_PAST = "until_in_the_past"
    UNTIL_TOO_FAR = "until_too_far"
    NAIVE_TIME = "until_without_offset"
    TOO_MANY_WINDOWS = "too_many_windows"
    NO_PROBLEM = "no_current_problem"
    TOO_MANY_ACKS = "too_many_acks"


def check_window(
    until: datetime,
    now: datetime,
    *,
    active_windows: int,
    replaces: bool,
    limits: MaintenanceLimits,
) -> MaintenanceRefusal | None:
    """Why a window until ``until`` cannot be started at ``now`` (None: it can).
    ``active_windows`` counts the active windows now; ``replaces`` says the target already
    has one (replacing it does not add one)."""
    if until.tzinfo is None or until.utcoffset() is None:
        return MaintenanceRefusal.NAIVE_TIME
    if until <= now:
        return MaintenanceRefusal.UNTIL_PAST
    if until - now > limits.max_duration:
        return MaintenanceRefusal.UNTIL_TOO_FAR
    if not replaces and active_windows >= limits.max_windows:
        return MaintenanceRefusal.TOO_MANY_WINDOWS
    return None


def check_ack(
    peripheral: PeripheralView | None,
    online: bool,
    *,
    current_acks: int,
    replaces: bool,
    limits: MaintenanceLimits,
) -> MaintenanceRefusal | None:
    """Why ``peripheral``'s problem cannot be acknowledged (None: it can): it must exist and
    be in a problem now (on an online terminal: an offline terminal's last conditions are
    not current); ``current_acks`` counts the terminal's acks that still apply."""
    if peripheral is None or not online or peripheral.condition is PeripheralCondition.OK:
        return MaintenanceRefusal.NO_PROBLEM
    if not replaces and current_acks >= limits.max_acks_per_terminal:
        return MaintenanceRefusal.TOO_MANY_ACKS
    return None


def ack_applies(ack: ProblemAck, peripheral: PeripheralView | None, online: bool) -> bool:
    """Whether ``ack`` still names ``peripheral``'s current problem: the same problem (same
    ``since``) and still not ok, on an online terminal."""
    return (
        online
        and peripheral is not None
        and peripheral.name == ack.peripheral
        and peripheral.condition is not PeripheralCondition.OK
        and peripheral.since == ack.problem_since
    )


@dataclass(frozen=True, slots=True)
class ActiveMaintenance:
    """The terminals and halls in maintenance at one instant."""

    terminals: frozenset[str] = frozenset()
    halls: frozenset[str] = frozenset()

    def covers(self, terminal_id: str, hall: str | None) -> bool:
        """Whether the terminal is in maintenance, by its own window or its hall's."""
        return terminal_id in self.terminals or (hall is not None and hall in self.halls)


NO_MAINTENANCE = ActiveMaintenance()


def active_maintenance(windows: Iterable[MaintenanceWindow], now: datetime) -> ActiveMaintenance:
    """What ``windows`` put in maintenance at ``now`` (expired and future ones left out)."""
    terminals: set[str] = set()
    halls: set[str] = set()
    for w in windows:
        if w.active(now):
            (terminals if w.scope is Scope.TERMINAL else halls).add(w.target)
    return ActiveMaintenance(frozenset(terminals), frozenset(halls))
