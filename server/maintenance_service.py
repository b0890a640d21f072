"""Operator actions on maintenance and problems, once for every caller: start or end a
maintenance window of a terminal or a hall, acknowledge a peripheral's current problem.

The API (``server.maintenance_api``) and the console (``server.console.action_routes``)
both call ``MaintenanceActions``; each translates ``MaintenanceRefusedError`` at its own
boundary (a JSON or an HTML answer). Decisions are ``server.maintenance``'s, rows
``server.maintenance_store``'s. It records no audit entry itself: it names what the
caller's entry should say through ``note`` (the target and short, non-secret detail),
so the API and the console audit an action the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from server.errors import MaintenanceRefusedError
from server.fleet_state import FleetState
from server.maintenance import (
    MaintenanceLimits,
    MaintenanceRefusal,
    MaintenanceWindow,
    ProblemAck,
    Scope,
    ack_applies,
    check_ack,
    check_window,
)
from server.maintenance_store import MaintenanceStore

__all__ = ["AuditNote", "MaintenanceActions"]


class AuditNote(Protocol):
    """What an action tells its caller's audit entry (``server.access_api.note_audit``)."""

    def __call__(self, target: str | None = None, **detail: str) -> None: ...


def _ignore(target: str | None = None, **detail: str) -> None:
    """An ``AuditNote`` for a caller that audits nothing."""


class MaintenanceActions:
    """Maintenance windows and acks over ``store`` for the terminals of ``fleet``.

    ``on_change`` is called after a window was started or ended (the metrics' book
    reloads). Every method raises MaintenanceRefusedError (see its code) and StorageError.
    """

    def __init__(
        self,
        store: MaintenanceStore,
        fleet: FleetState,
        clock: Callable[[], datetime],
        *,
        limits: MaintenanceLimits,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.limits = limits
        self._fleet = fleet
        self._clock = clock
        self._on_change = on_change

    def start(
        self,
        scope: Scope,
        target: str,
        *,
        reason: str,
        until: datetime,
        actor: str,
        note: AuditNote = _ignore,
    ) -> MaintenanceWindow:
        """Put ``target`` in maintenance until ``until`` (replacing its window)."""
        now = self._clock()
        note(target=target, reason=reason, until=until.isoformat())
        current = self.store.windows(active_at=now)
        replaces = any(w.scope is scope and w.target == target for w in current)
        refusal = check_window(
            until, now, active_windows=len(current), replaces=replaces, limits=self.limits
        )
        if refusal is not None:
            raise MaintenanceRefusedError(
                refusal.value, f"cannot start maintenance of {target!r} until {until}"
            )
        window = MaintenanceWindow(
            scope=scope, target=target, reason=reason, until=until, started_at=now,
            started_by=actor,
        )  # fmt: skip
        self.store.put_window(window)
        self._on_change()
        return window

    def end(self, scope: Scope, target: str, *, note: AuditNote = _ignore) -> MaintenanceWindow:
        """End ``target``'s window now; code ``no_maintenance`` when none is active."""
        note(target=target)
        ended = self.store.end_window(scope, target)
        self._on_change()
        if ended is None or not ended.active(self._clock()):
            raise MaintenanceRefusedError(
                "no_maintenance", f"{scope} {target!r} is not in maintenance"
            )
        return ended

    def ack(
        self,
        terminal_id: str,
        peripheral: str,
        *,
        note_text: str,
        assignee: str | None,
        actor: str,
        note: AuditNote = _ignore,
    ) -> ProblemAck:
        """Acknowledge the current problem of ``peripheral`` (replacing its ack); codes
        ``unknown_terminal``, ``no_current_problem``, ``too_many_acks``."""
        note(target=f"{terminal_id}/{peripheral}", assignee=assignee or "")
        view = self._fleet.get(terminal_id)
        if view is None:
            raise MaintenanceRefusedError("unknown_terminal", f"unknown terminal {terminal_id!r}")
        peripherals = {p.name: p for p in view.peripherals}
        stored = self.store.acks(terminal_id)
        applying = [a for a in stored if ack_applies(a, peripherals.get(a.peripheral), view.online)]
        found = peripherals.get(peripheral)
        refusal = check_ack(
            found,
            view.online,
            current_acks=len(applying),
            replaces=any(a.peripheral == peripheral for a in applying),
            limits=self.limits,
        )
        if refusal is not None or found is None:
            raise MaintenanceRefusedError(
                (refusal or MaintenanceRefusal.NO_PROBLEM).value,
                f"cannot acknowledge {peripheral!r} of {terminal_id!r}",
            )
        note(condition=found.condition.value)
        ack = ProblemAck(
            terminal_id=terminal_id,
            peripheral=peripheral,
            problem_since=found.since,
            condition=found.condition,
            note=note_text,
            assignee=assignee,
            acked_at=self._clock(),
            acked_by=actor,
        )
        self.store.put_ack(ack)
        return ack
