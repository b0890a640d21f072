"""A directive's install window from its terminal's hall hours (issue 11, Deliver 3).

Pure: the hall's ``OpeningHours`` (or None), the clock and the directive's lifetime in, an
``InstallWindow`` or a ``NoWindow`` (why no directive can be sent now) out. The driver
(``server.rollout_service``) signs what this returns; it decides nothing itself.

Rules (docs/updates.md, "Rolling out", install windows):

- Default: terminals download at once and install only while the hall is closed: the window
  is ``next_closed_window(hours, now)``, cut at the directive's expiry (``now + lifetime``),
  so the agent stops waiting when the server's per-terminal timeout would end the attempt.
- The window must start before the directive expires: a hall that stays open past it gets
  no directive now (``NoWindow``); the planner's timeout and retry send one later.
- ``install_while_open`` (the rollout's override): the window is ``now .. expiry`` and the
  directive says so (``Directive.install_while_open``).
- A hall with no hours set: no restriction, ``now .. expiry``, the flag left as the rollout
  sets it. Rejected: refusing to send (a hall without hours would never update) and a
  fixed night window (hours the operator never stated).

Never reads a clock, a database or the hours itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from server.opening_hours import OpeningHours, next_closed_window

__all__ = ["InstallWindow", "NoWindow", "install_window"]


@dataclass(frozen=True, slots=True)
class InstallWindow:
    """The directive's times: install within ``[not_before, not_after)``, accept until
    ``expires_at`` (``not_before < expires_at`` always)."""

    not_before: datetime
    not_after: datetime
    expires_at: datetime
    install_while_open: bool


@dataclass(frozen=True, slots=True)
class NoWindow:
    """No directive can be sent now; ``reason`` is a sentence for the audit log."""

    reason: str


def install_window(
    hours: OpeningHours | None,
    now: datetime,
    *,
    lifetime: timedelta,
    install_while_open: bool,
) -> InstallWindow | NoWindow:
    """The window of a directive issued at ``now`` living ``lifetime`` (> 0).

    Raises ValueError for a naive ``now`` or a lifetime that is not positive."""
    if lifetime <= timedelta(0):
        raise ValueError("the directive lifetime must be positive")
    expires_at = now + lifetime
    if install_while_open or hours is None:
        return InstallWindow(now, expires_at, expires_at, install_while_open)
    closed = next_closed_window(hours, now)
    if closed is None:
        return NoWindow("the hall never closes within the horizon of its hours")
    start, end = closed
    if start >= expires_at:
        return NoWindow(
            f"the hall is open until {start.isoformat()}, after the directive would expire"
            f" ({expires_at.isoformat()}); set a longer terminal_timeout_s or install_while_open"
        )
    not_after = expires_at if end is None else min(end, expires_at)
    return InstallWindow(start, not_after, expires_at, False)
