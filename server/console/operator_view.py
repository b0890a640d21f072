"""What the console's fleet pages show of the operators' actions: the active maintenance
windows and the acks that still apply to the terminals on the page.

Read-only: the actions themselves are ``server.console.action_routes``'s. No template
reads a table: the page handlers pass an ``OperatorView``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from server.fleet_views import TerminalView
from server.maintenance import MaintenanceWindow, ProblemAck, Scope, ack_applies
from server.maintenance_service import MaintenanceActions

__all__ = ["OperatorView", "operator_view"]


@dataclass(frozen=True, slots=True)
class OperatorView:
    """What operators did that a page shows: active windows by (scope, target), current
    acks by (terminal, peripheral)."""

    windows: dict[tuple[str, str], MaintenanceWindow]
    acks: dict[tuple[str, str], ProblemAck]

    def window(self, scope: str, target: str | None) -> MaintenanceWindow | None:
        """The active window of a ``terminal`` or a ``hall``, if any."""
        return None if target is None else self.windows.get((scope, target))

    def covering(self, view: TerminalView) -> MaintenanceWindow | None:
        """The window that puts ``view``'s terminal in maintenance (its own, else its hall's)."""
        return self.window(Scope.TERMINAL, view.id) or self.window(Scope.HALL, view.hall)

    def ack(self, terminal_id: str, peripheral: str) -> ProblemAck | None:
        return self.acks.get((terminal_id, peripheral))


def operator_view(
    actions: MaintenanceActions | None, views: list[TerminalView], now: datetime
) -> OperatorView:
    """The active windows and the acks that still apply to ``views``' problems (empty
    without maintenance actions). Raises StorageError."""
    if actions is None:
        return OperatorView({}, {})
    windows = {(str(w.scope), w.target): w for w in actions.store.windows(active_at=now)}
    by_id = {v.id: v for v in views}
    acks = {}
    for ack in actions.store.acks(views[0].id if len(views) == 1 else None):
        view = by_id.get(ack.terminal_id)
        if view is None:
            continue
        peripheral = next((p for p in view.peripherals if p.name == ack.peripheral), None)
        if ack_applies(ack, peripheral, view.online):
            acks[(ack.terminal_id, ack.peripheral)] = ack
    return OperatorView(windows, acks)
