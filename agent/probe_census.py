"""What each probe found when the agent started: one log line per probe for the installer.

An installer on site runs the agent and reads its first lines: ``found`` for a
device that answered, ``MISSING`` (a WARNING) for one that is not there (the
kind's *absent* condition, ``protocol.taxonomy``), ``UNREADABLE`` (a WARNING) for
one whose state cannot be read (``unknown``, or the probe raised). Each line names
the probe, its type and kind and where it looked (``agent.probes.factory.probe_device``).

``census`` is pure (the first readings in, lines out); ``log_census`` writes them.
This module never reads a device itself: the ``ProbeReader`` did, once, at start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from protocol.messages import PeripheralCondition, PeripheralKind, PeripheralStatus
from protocol.taxonomy import family_of

__all__ = ["CensusLine", "ProbePlace", "census", "log_census"]

log = logging.getLogger(__name__)

FOUND: Final = "found"
MISSING: Final = "MISSING"
UNREADABLE: Final = "UNREADABLE"


@dataclass(frozen=True, slots=True)
class ProbePlace:
    """A probe as configured: its wire name, kind, ``type`` and where it looks."""

    name: str
    kind: PeripheralKind
    probe_type: str
    device: str


@dataclass(frozen=True, slots=True)
class CensusLine:
    """One probe's first reading, as logged."""

    place: ProbePlace
    verdict: str  # FOUND, MISSING or UNREADABLE
    condition: str  # the condition, or "error"
    detail: str | None

    @property
    def level(self) -> int:
        return logging.INFO if self.verdict == FOUND else logging.WARNING

    def message(self) -> str:
        p = self.place
        detail = f": {self.detail}" if self.detail else ""
        return (
            f"probe {p.name} ({p.probe_type}, {p.kind.value}) at {p.device}: "
            f"{self.verdict} ({self.condition}{detail})"
        )


def census(
    places: Sequence[ProbePlace], first: Mapping[str, PeripheralStatus | Exception | None]
) -> list[CensusLine]:
    """A line per probe in ``places`` from its first reading in ``first`` (by name)."""
    lines = []
    for place in places:
        result = first.get(place.name)
        if isinstance(result, PeripheralStatus):
            if result.condition == family_of(place.kind).absent:
                verdict = MISSING
            elif result.condition == PeripheralCondition.UNKNOWN:
                verdict = UNREADABLE
            else:
                verdict = FOUND
            lines.append(CensusLine(place, verdict, result.condition.value, result.detail))
        elif isinstance(result, Exception):
            lines.append(
                CensusLine(place, UNREADABLE, "error", f"{type(result).__name__}: {result}")
            )
        else:
            lines.append(CensusLine(place, UNREADABLE, "not read", None))
    return lines


def log_census(
    terminal_id: str,
    places: Sequence[ProbePlace],
    first: Mapping[str, PeripheralStatus | Exception | None],
) -> list[CensusLine]:
    """Log ``census`` (a summary line first) and return its lines."""
    lines = census(places, first)
    if not lines:
        log.warning("terminal %s has no probes configured: it reports no peripherals", terminal_id)
        return lines
    found = sum(line.verdict == FOUND for line in lines)
    log.log(
        logging.INFO if found == len(lines) else logging.WARNING,
        "terminal %s: %d of %d configured device(s) found",
        terminal_id,
        found,
        len(lines),
    )
    for line in lines:
        log.log(line.level, "%s", line.message())
    return lines
