"""The health policy: what operators, dashboards and alerts call a terminal's health.

``offline`` when the terminal is not online; ``faulty`` when it is online with
at least one peripheral in a condition that blocks service (the peripheral
taxonomy says which: ``protocol.taxonomy.is_blocking``; a printer out of
paper, a reader that faults); ``warning`` when online with only non-blocking
problems (paper low, a state the probe cannot tell); else ``ok``. The API's
``Status`` folds ``warning`` and ``faulty`` into ``degraded``.

``closed`` is ``offline`` seen with the hall's opening hours: a terminal that shut
down cleanly (its agent said so) while its hall is closed is not a problem
(``closed_or``). It needs the hall's hours and the clock, so the fleet's tallies
never hold it; the metrics collector applies it at scrape time.

This is the only place that rolls peripherals up into a terminal's health. Pure:
no I/O, no clock, no state.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from protocol.taxonomy import PeripheralCondition, PeripheralKind, is_blocking

__all__ = ["Health", "Status", "closed_or", "status_of", "terminal_health"]


class Health(StrEnum):
    """A terminal's health as operators, dashboards and alerts see it (see the module doc)."""

    OK = "ok"  # online, every peripheral ok
    WARNING = "warning"  # online, only non-blocking problems (paper low, state unknown)
    FAULTY = "faulty"  # online, at least one blocking problem
    OFFLINE = "offline"
    CLOSED = "closed"  # offline after a clean shutdown while its hall is closed (not a problem)


class Status(StrEnum):
    """The API's status: ``Health`` with ``warning`` and ``faulty`` folded into ``degraded``."""

    OK = "ok"
    DEGRADED = "degraded"  # online, at least one peripheral not ok
    OFFLINE = "offline"


_OK: Final = PeripheralCondition.OK

_STATUS_OF_HEALTH: Final = {
    Health.OK: Status.OK,
    Health.WARNING: Status.DEGRADED,
    Health.FAULTY: Status.DEGRADED,
    Health.OFFLINE: Status.OFFLINE,
    Health.CLOSED: Status.OFFLINE,
}


def terminal_health(
    online: bool, peripherals: Iterable[tuple[PeripheralKind, PeripheralCondition]]
) -> Health:
    """The health of a terminal that is ``online`` (or not) with these (kind, condition) pairs."""
    if not online:
        return Health.OFFLINE
    health = Health.OK
    for kind, condition in peripherals:
        if condition is _OK:
            continue
        if is_blocking(kind, condition):
            return Health.FAULTY
        health = Health.WARNING
    return health


def closed_or(health: Health, *, clean_shutdown: bool, hall_open: bool) -> Health:
    """``closed`` for an ``offline`` terminal that shut down cleanly while its hall is
    closed; else ``health``. A terminal lost (will, timeout) stays ``offline`` at night:
    nobody switched it off."""
    if health is Health.OFFLINE and clean_shutdown and not hall_open:
        return Health.CLOSED
    return health


def status_of(health: Health) -> Status:
    """The API's status for ``health``."""
    return _STATUS_OF_HEALTH[health]
