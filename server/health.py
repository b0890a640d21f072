"""The health policy: what operators, dashboards and alerts call a terminal's health.

``offline`` when the terminal is not online; ``faulty`` when it is online with
at least one peripheral in a condition that blocks service (the peripheral
taxonomy says which: ``protocol.taxonomy.is_blocking``; a printer out of
paper, a reader that faults); ``warning`` when online with only non-blocking
problems (paper low, a state the probe cannot tell); else ``ok``; and ``closed``
(below). These values are the one vocabulary of the API (a terminal's ``health``, the
``?health=`` filter, a hall's counts), the metrics (``kioskfleet_terminals{status}``),
the console and the docs; there is no folded ``degraded`` status (docs/server.md,
"Health").

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

__all__ = ["Health", "closed_or", "terminal_health"]


class Health(StrEnum):
    """A terminal's health as operators, dashboards and alerts see it (see the module doc)."""

    OK = "ok"  # online, every peripheral ok
    WARNING = "warning"  # online, only non-blocking problems (paper low, state unknown)
    FAULTY = "faulty"  # online, at least one blocking problem
    OFFLINE = "offline"
    CLOSED = "closed"  # offline after a clean shutdown while its hall is closed (not a problem)


_OK: Final = PeripheralCondition.OK


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
